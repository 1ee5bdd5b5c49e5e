"""Inspect a generated dataset: counts, acceptance, similarity histograms, quality metrics, contact sheet,
leakage report, and one HTML page that shows them all.

Works on any directory written by ``synthface generate`` (filter on or off). Figures come from the
committed shards, ``identities.parquet`` and, with filtering on, the per-candidate filter records.
Intra-identity cosines (every pair of images of one identity) and inter-identity cosines (pairs of
images of different identities: all of them, or a fixed random subset of large sets) are measured
by embedding the stored template crops of up to ``max_identities`` identities with an embedder
(default: the filter embedder when the filter ran, else the offline default, dlib). Stored crops
are the tight ArcFace template, so an embedder trained on another crop (dlib) reads them less well
than it reads the original renders: compare datasets with the same embedder, not these cosines
with another tool's.

The quality figures (``quality`` in inspect.json: consistency, separability, spread, pose, detection,
the reference comparison, quality.png, per identity) come from :mod:`synthface.dataset.quality_report`.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synthface.dataset import quality as q
from synthface.dataset.html_report import REPORT_HTML, SheetImage, SheetRow, write_html
from synthface.dataset.quality import quantiles
from synthface.atomic import atomic_write_text, staged_folder
from synthface.config import InspectRecipe
from synthface.embeddings import l2n
from synthface.dataset.quality_report import (
    QUALITY_DEFINITIONS,
    by_yaw,
    detect_poses,
    get_detector,
    embed_crops,
    non_face_warning,
    per_identity,
    quality_figure,
    quality_thresholds,
    reference_crops,
    reference_figures,
    variation_figures,
)
from synthface.dataset.layout import CONFIG_FILE, IDENTITIES_FILE, SUMMARY_FILE
from synthface.dataset.writer import VARIATION_COLUMNS
from synthface.errors import InputError
from synthface.figures import hist_png
from synthface.runtime import Progress, progress_or_null

REPORT_FILE = "inspect.json"


def _read_shards(src: Path, allow_partial: bool = False) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from synthface.dataset.shards import committed_shards

    shards = committed_shards(src, allow_partial=allow_partial)
    if not shards:
        raise InputError(f"no committed shards in {src}: pass the --out directory of `synthface generate`")
    columns = ["label", "identity", "sample", "id_score", "det_score"]
    # the per-image variation draws, when the run drew them (every shard of a run has the same columns)
    if all(name in pq.read_schema(shards[0]).names for name in VARIATION_COLUMNS):
        columns += list(VARIATION_COLUMNS)
    tables = [pq.read_table(p, columns=columns) for p in shards]
    return shards, pa.concat_tables(tables)


def _load_images(shards: list[Path], wanted: set[int]) -> dict[int, list[tuple[int, bytes]]]:
    """Encoded images of the wanted labels: label -> [(sample, bytes)] sorted by sample."""
    import pyarrow.parquet as pq

    out: dict[int, list[tuple[int, bytes]]] = {}
    for path in shards:
        t = pq.read_table(path, columns=["image", "label", "sample"])
        labels = t.column("label").to_numpy()
        rows = np.flatnonzero(np.isin(labels, list(wanted)))
        for r in rows:
            out.setdefault(int(labels[r]), []).append((int(t.column("sample")[r].as_py()), t.column("image")[r].as_py()["bytes"]))
    return {k: sorted(v) for k, v in out.items()}


def _decode(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"), np.uint8)


def contact_sheet(rows: list[tuple[int, list[bytes]]], path: Path, tile: int = 112) -> Path:
    """One row per (label, images) in the order given; as wide as its longest row."""
    from PIL import Image, ImageDraw

    cols = max([len(images) for _, images in rows] + [1])
    pad = 40
    sheet = Image.new("RGB", (pad + cols * tile, max(1, len(rows)) * tile), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, (label, images) in enumerate(rows):
        draw.text((2, r * tile + tile // 2 - 5), str(label), fill=(0, 0, 0))
        for c, data in enumerate(images):
            img = Image.fromarray(_decode(data)).resize((tile, tile))
            sheet.paste(img, (pad + c * tile, r * tile))
    sheet.save(path)
    return path


def similarity_pairs(
    emb: np.ndarray, labels: np.ndarray, max_pairs: int = 200_000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(intra, inter) cosines: every same-label pair; every different-label pair when there are at most
    ``max_pairs`` of them, else a seeded random subset of ``max_pairs`` distinct ones."""
    emb = l2n(emb, emb.dtype)
    intra = []
    for label in np.unique(labels):
        x = emb[labels == label]
        if len(x) > 1:
            g = x @ x.T
            intra.append(g[np.triu_indices(len(x), 1)])
    n = len(emb)
    inter = np.zeros(0)
    if n > 1 and len(np.unique(labels)) > 1:
        a, b = np.triu_indices(n, 1) if n * (n - 1) // 2 <= 4 * max_pairs else _random_pairs(n, 4 * max_pairs, seed)
        ok = labels[a] != labels[b]
        a, b = a[ok], b[ok]
        if len(a) > max_pairs:
            keep = np.sort(np.random.default_rng(seed).choice(len(a), max_pairs, replace=False))
            a, b = a[keep], b[keep]
        inter = (emb[a] * emb[b]).sum(1)
    return (np.concatenate(intra) if intra else np.zeros(0)), inter


def _random_pairs(n: int, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``count`` distinct unordered index pairs (i < j) of ``n`` items, seeded."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, n, size=count), rng.integers(0, n, size=count)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    codes = np.unique((lo * n + hi)[lo != hi])
    return codes // n, codes % n


def default_embedder(config: dict[str, Any]) -> str:
    """The dataset's filter embedder when its filter ran (its weights are here), else the offline default."""
    from synthface.config import DEFAULT_EMBEDDER

    filt = config.get("filter") or {}
    return str(filt.get("embedder") or DEFAULT_EMBEDDER) if filt.get("enabled") else DEFAULT_EMBEDDER


def inspect_dataset(
    src: str | Path,
    out: str | Path | None = None,
    recipe: InspectRecipe | None = None,
    *,
    embedder: Any = None,
    detector: Any = None,
    progress: Progress | None = None,
    allow_partial: bool = False,
    **settings: Any,
) -> dict[str, Any]:
    """Write the report (JSON, PNGs, report.html) of the dataset in ``src`` to ``out`` (default SRC/inspect); returns it.

    ``embedder`` "none" skips the similarity histograms and the embedding figures (no embedder
    needed); None picks :func:`default_embedder`. ``reference`` is a folder of aligned real faces
    (one sub-folder per person; or shards, or a RecordIO file) to compare with: up to
    ``reference_images`` of its images (people in a seeded order, each with at most as many images as
    the dataset's largest sampled identity), resized to the dataset's crop size, give the Frechet
    distance and k-NN precision/recall (``k``) and the same figures as the dataset's.
    ``detector`` (see :func:`.quality_report.get_detector`) finds the faces and landmarks of the pose and detection
    figures. With ``card``, the quality figures also go into the dataset card (SRC/README.md, when
    synthface wrote it) of a complete dataset. An incomplete dataset is refused unless
    ``allow_partial`` (then the report covers the committed shards). The embedder, the gallery, the
    reference folder and the detector are loaded before anything is written, and the files move into
    ``out`` only once all of them are written: a failure leaves no partial report.

    The settings are ``recipe`` (an :class:`InspectRecipe`; its defaults when None) with ``settings``
    (keys of it: ``k=2``, ``device="cpu"`` ...) put over it; ``embedder`` and ``detector`` may also be
    objects (an embedder, a detector) that take the recipe's place.
    """
    cfg = _settings(recipe, settings)
    embedder = embedder if embedder is not None else cfg.embedder
    detector = detector if detector is not None else cfg.detector
    gallery, reference, reference_images, k = cfg.gallery, cfg.reference, cfg.reference_images, cfg.k
    max_identities, sheet_identities, sheet_images = cfg.max_identities, cfg.sheet_identities, cfg.sheet_images
    card, seed, device = cfg.card, cfg.seed, cfg.device
    src = Path(src)
    if not src.is_dir():
        raise InputError(f"dataset {src} not found: pass the --out directory of `synthface generate`")
    out = Path(out) if out is not None else src / "inspect"
    shards, rows = _read_shards(src, allow_partial)
    if rows.num_rows == 0:
        raise InputError(
            f"dataset {src} holds 0 images (its run kept no identity): nothing to inspect; regenerate it "
            "with a lower filter.threshold or more identities"
        )
    config: dict[str, Any] = {}
    if (src / CONFIG_FILE).is_file():
        from synthface.config import read_resolved

        try:
            config = read_resolved(src / CONFIG_FILE)
        except Exception:  # noqa: BLE001 - yaml and decoding errors alike
            raise InputError(f"{src}/{CONFIG_FILE} is unreadable: regenerate the dataset or restore the file") from None
    name = embedder or default_embedder(config)
    emb_model = None
    if name != "none":
        from synthface.faces.embedders import get_embedder

        emb_model = get_embedder(name, device=device)
    real = None
    if gallery:
        if emb_model is None:
            raise InputError("--gallery needs the similarity embedder: drop --embedder none")
        from synthface.gallery import read_embeddings_parquet

        real = read_embeddings_parquet(gallery)
        if real.embedder and real.embedder != name:
            raise InputError(
                f"--gallery holds '{real.embedder}' embeddings but inspect embeds with '{name}': pass --embedder {real.embedder}"
            )
    ref_data = None
    if reference:
        if emb_model is None:
            raise InputError("--reference needs the embedder: drop --embedder none")
        if not Path(reference).exists():
            raise InputError(f"reference {reference} not found: pass a folder of aligned face images, one sub-folder per person")
        if Path(reference).is_file() and Path(reference).suffix != ".rec":
            raise InputError(
                f"--reference {reference} is a file but not a RecordIO .rec: pass a folder of aligned face images "
                "(one sub-folder per person), a synthface dataset or a train.rec"
            )
        from synthface.dataset.reader import open_training_set

        ref_data = open_training_set(reference, size=None, min_images=1)
        usable = min(len(ref_data), reference_images)
        if usable <= max(k, 1):
            raise InputError(
                f"--reference {reference} gives {usable} image(s); the Frechet distance and k-NN precision/recall "
                f"(k={k}) need more than {max(k, 1)}: pass a larger reference"
            )
    det_name, det = get_detector(detector, device)
    inputs = _Inputs(config=config, name=name, emb_model=emb_model, real=real, gallery=gallery, ref_data=ref_data,
                     reference=str(reference) if reference else None, reference_images=reference_images, k=k,
                     det_name=det_name, det=det, max_identities=max_identities, sheet_identities=sheet_identities,
                     sheet_images=sheet_images, seed=seed)  # fmt: skip
    from synthface.dataset.locks import output_lock

    with output_lock(out):  # another command writing --out is refused, not overwritten
        with staged_folder(out) as stage:
            report = _report(src, out, stage, shards, rows, inputs, progress_or_null(progress))
        if card and not allow_partial:
            from synthface.dataset.card import write_quality_section

            path = write_quality_section(src, report, out)
            if path is not None:
                report["files"]["card"] = str(path)
    return report


def _settings(recipe: InspectRecipe | None, settings: dict[str, Any]) -> InspectRecipe:
    """``recipe`` (the defaults when None) with ``settings`` put over it, validated as a recipe is."""
    base = recipe if recipe is not None else InspectRecipe()
    given = {key: str(value) if isinstance(value, Path) else value for key, value in settings.items()}
    return InspectRecipe.model_validate(base.model_dump() | given)


@dataclass
class _Inputs:
    """What :func:`_report` measures with: the loaded models and data, and the settings."""

    config: dict[str, Any]
    name: str
    emb_model: Any
    real: Any
    gallery: str | None
    ref_data: Any
    reference: str | None
    reference_images: int
    k: int
    det_name: str
    det: Any
    max_identities: int
    sheet_identities: int
    sheet_images: int
    seed: int


def _report(src: Path, out: Path, stage: Path, shards: list[Path], rows: Any, inp: _Inputs, bar: Progress) -> dict[str, Any]:
    """The report's figures, JSON and HTML, written into ``stage``; the paths it records are under ``out``."""
    import pyarrow.parquet as pq

    from synthface.dataset.filter_records import leakage_summary, read_records

    config, name, emb_model = inp.config, inp.name, inp.emb_model

    def written(path: Path) -> str:
        return str(out / path.name)

    labels = np.asarray(rows.column("label").to_numpy(), np.int64)
    valid = labels >= 0
    _, counts = np.unique(labels[valid], return_counts=True)
    report: dict[str, Any] = {
        "dataset": str(src),
        "shards": len(shards),
        "images": int(valid.sum()),
        "identities": int(len(counts)),
        "images_per_identity": {
            **quantiles(counts),
            "histogram": {str(k): int(v) for k, v in zip(*np.unique(counts, return_counts=True))},
        },
        "id_score": quantiles(rows.column("id_score").to_numpy(zero_copy_only=False)),
        "det_score": quantiles(rows.column("det_score").to_numpy(zero_copy_only=False)),
        "labels_contiguous": bool(len(counts) == 0 or np.array_equal(np.unique(labels[valid]), np.arange(len(counts)))),
        "files": {},
    }
    drawn = variation_figures(rows)
    if drawn is not None:
        report["variation"] = drawn
    figures: dict[str, Path] = {}
    ident_path = src / IDENTITIES_FILE
    try:
        identities = pq.read_table(ident_path) if ident_path.is_file() else None
    except Exception:  # noqa: BLE001 - pyarrow raises many types on a bad file
        raise InputError(f"{ident_path} is damaged: run `synthface generate` with the same arguments to rewrite it") from None
    if identities is not None:
        kept = np.asarray(identities.column("kept").to_numpy(zero_copy_only=False), bool)
        reasons = [r for r, k in zip(identities.column("reason").to_pylist(), kept) if not k]
        by: dict[str, int] = {}
        for r in reasons:
            key = (r or "unknown").split(":", 1)[0]
            by[key] = by.get(key, 0) + 1
        report["identities_planned"] = int(len(kept))
        report["identities_dropped"] = by
    records = read_records(src)
    if records is not None and records.num_rows:
        cand = records.column("candidates").to_numpy()
        passed = records.column("passed").to_numpy()
        # statuses are the in-shard decisions; an identity dropped later (separation, leakage) loses its samples
        final = {}
        if identities is not None:
            final = {int(i): (bool(k), (r or "").split(":", 1)[0]) for i, k, r in zip(
                identities.column("index").to_pylist(), identities.column("kept").to_pylist(), identities.column("reason").to_pylist())}  # fmt: skip
        status = []
        for i, row in zip(records.column("identity").to_pylist(), records.column("status").to_pylist()):
            kept_i, why = final.get(int(i), (True, ""))
            status += [s if kept_i or s not in ("kept", "surplus") else f"identity dropped ({why})" for s in row]
        report["acceptance"] = {
            "candidates": int(cand.sum()),
            "passed": int(passed.sum()),
            "rate": float(passed.sum() / max(cand.sum(), 1)),
            "per_identity_rate": quantiles(passed / np.maximum(cand, 1)),
            "status": {k: status.count(k) for k in sorted(set(status))},
        }
        ids = [x for row in records.column("id_scores").to_pylist() for x in row]
        threshold = (config.get("filter") or {}).get("threshold")
        path = hist_png(
            stage / "candidate_scores.png",
            (
                {
                    "all candidates": np.array(ids, np.float64),
                    "kept": rows.column("id_score").to_numpy(zero_copy_only=False),
                },  # fmt: skip
                "identity score of candidates",
                "cosine to anchor",
                {"threshold": float(threshold)} if threshold is not None else None,
            ),
        )
        report["files"]["candidate_scores"] = written(path)
        figures["identity score of the filter's candidates"] = path

    # the sampled identities: every figure below is measured on their stored crops
    all_labels = np.unique(labels[valid])
    step = max(1, len(all_labels) // max(1, inp.max_identities))
    sampled = [int(x) for x in all_labels[::step][: inp.max_identities]]
    bar.start(None, "inspect: reading images")
    images = _load_images(shards, set(sampled))
    bar.finish()
    items = [(label, sample, data) for label in sampled for sample, data in images.get(label, [])]
    lab = np.asarray([label for label, _, _ in items], np.int64)
    crops = [_decode(data) for _, _, data in items] if (emb_model is not None or inp.det is not None) else []
    quality: dict[str, Any] = {"identities": len(sampled), "images": len(items), "embedder": name, "detector": inp.det_name}

    # detection and pose
    poses = np.full((len(items), 3), np.nan)
    if inp.det is not None and crops:
        poses, found = detect_poses(inp.det, inp.det_name, crops, lab, bar)
        quality.update(found)

    # similarity histograms and the embedding figures
    emb = None
    centres = None
    cos_centre = np.full(len(items), np.nan)
    if emb_model is not None and crops:
        emb = embed_crops(emb_model, crops, bar, f"inspect: embedding with {name}")
        intra, inter = similarity_pairs(emb, lab)
        report["similarity"] = {"embedder": name, "identities": len(sampled), "images": len(crops),
                                "intra": quantiles(intra), "inter": quantiles(inter)}  # fmt: skip
        path = hist_png(stage / "similarity.png", ({"intra-identity": intra, "inter-identity": inter},
                         f"pairwise cosine ({name}, {len(crops)} images of {len(sampled)} identities)", "cosine", None, "pairs"))  # fmt: skip
        report["files"]["similarity"] = written(path)
        figures["pairwise cosine"] = path
        threshold, duplicate = quality_thresholds(config, name)
        quality["consistency"] = q.consistency(emb, lab, threshold)
        quality["separability"] = q.separability(emb, lab, duplicate)
        quality["spread"] = q.embedding_spread(emb, lab)
        if quality["separability"]["nearest_other"]:
            report["similarity"]["nearest_identity_centre"] = quality["separability"]["nearest_other"]
        _, centres = q.identity_centres(emb, lab)
        _, cos_centre, _ = q.cos_to_centre(emb, lab)
    ref_emb, ref_labels = None, None
    if inp.ref_data is not None and emb is not None:
        ref_crops, ref_labels = reference_crops(inp.ref_data, inp.reference_images, inp.seed, crops[0].shape[0],
                                                 int(np.bincount(lab).max()))  # fmt: skip
        ref_emb = embed_crops(emb_model, ref_crops, bar, f"inspect: embedding the reference with {name}")
        quality["reference"] = reference_figures(emb, ref_emb, ref_labels, inp.reference, inp.name, inp.k,
                                                 *quality_thresholds(config, name))  # fmt: skip
    path = quality_figure(stage, quality, emb, lab, cos_centre, poses, ref_emb, ref_labels)
    if path is not None:
        report["files"]["quality"] = written(path)
        figures["quality metrics"] = path
    warning = non_face_warning(quality)
    if warning:
        report["warnings"] = [warning]
    identities_sampled = per_identity(rows, sampled, lab, emb, cos_centre, poses, quality)
    quality["per_identity"] = identities_sampled
    quality["definitions"] = QUALITY_DEFINITIONS
    report["quality"] = quality

    # contact sheet: a row per identity, images in increasing estimated yaw
    sheet: list[SheetRow] = []
    for entry in identities_sampled[: inp.sheet_identities]:
        idx = np.flatnonzero(lab == entry["label"])
        chosen = idx[by_yaw(poses[idx, 0], inp.sheet_images)]
        sheet.append(SheetRow(entry["label"], entry["identity"], [
            SheetImage(items[i][2], items[i][1], None if not np.isfinite(poses[i, 0]) else tuple(float(x) for x in poses[i]),
                       None if not np.isfinite(cos_centre[i]) else float(cos_centre[i])) for i in chosen],
            {k: entry[k] for k in ("cos_to_centre", "nearest_other", "yaw_std") if entry.get(k) is not None}))  # fmt: skip
    report["files"]["contact_sheet"] = written(contact_sheet([(r.label, [im.data for im in r.images]) for r in sheet],
                                                             stage / "contact_sheet.png"))  # fmt: skip

    # leakage
    leak: dict[str, Any] = {}
    if identities is not None and "leakage_cosine" in identities.column_names:
        # the identities the dataset has: a planned identity the filter dropped is not in it
        in_dataset = np.asarray(identities.column("kept").to_numpy(zero_copy_only=False), bool)
        cos = np.asarray(identities.column("leakage_cosine").to_numpy(zero_copy_only=False), np.float64)[in_dataset]
        thr = (json.loads((src / SUMMARY_FILE).read_text()).get("filter", {}).get("leakage", {}).get("threshold")
               if (src / SUMMARY_FILE).is_file() else None)  # fmt: skip
        if np.isfinite(cos).any():
            leak = {"source": "generate", **leakage_summary(cos, float(thr) if thr is not None else 1.0), "threshold": thr}
    if inp.real is not None and centres is not None:
        cos = (centres @ inp.real.persons.T).max(1)
        leak = {"source": f"inspect --gallery {inp.gallery}", "embedder": name, **leakage_summary(cos, 1.0)}
        leak.pop("above_threshold", None)
    if leak:
        report["leakage"] = leak
        values = np.asarray(cos, np.float64)
        path = hist_png(stage / "leakage.png", ({"nearest real person": values}, "identity centre vs nearest real person",
                                                 "cosine", None, "identities"))  # fmt: skip
        report["files"]["leakage"] = written(path)
        figures["leakage"] = path
    else:
        report["leakage"] = {"note": "no gallery: pass --gallery EMBEDDINGS.parquet (from `synthface embed`) to measure it"}
    report["files"]["html"] = str(out / REPORT_HTML)
    report["files"]["report"] = str(out / REPORT_FILE)
    write_html(stage / REPORT_HTML, report, sheet, figures)
    atomic_write_text(stage / REPORT_FILE, json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    return report
