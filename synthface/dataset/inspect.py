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

The quality metrics (``quality`` in inspect.json; definitions in :data:`QUALITY_DEFINITIONS`) are
the functions of :mod:`synthface.dataset.quality` on the same embeddings. Pose and detection come
from MTCNN run on the stored crops: the shards keep the detector's score (``det_score``, NaN when
the filter's detector did not run) but not its landmarks, and a crop warped to the template keeps
the nose-to-eyes geometry yaw and pitch are read from, so the landmarks are detected again there.
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
from synthface.atomic import staged_folder
from synthface.embeddings import l2n
from synthface.dataset.writer import VARIATION_COLUMNS
from synthface.errors import InputError
from synthface.figures import save_figure
from synthface.runtime import Progress, progress_or_null

REPORT_FILE = "inspect.json"

# What each quality figure in inspect.json means and where it comes from (the HTML table and the card show these).
QUALITY_DEFINITIONS: dict[str, dict[str, str]] = {
    "consistency": {
        "definition": "cosine of each image to its identity centre (the normalised mean of the identity's embeddings), "
        "averaged per identity; quantiles over identities (1 = every image embeds the same)",
        "source": "identity consistency as DCFace (Kim et al. 2023), IDiff-Face (Boutros et al. 2023) and Vec2Face report it",
    },
    "within_threshold": {
        "definition": "fraction of images whose cosine to their identity centre is at least the threshold: the dataset's "
        "filter threshold when inspect embeds with the filter embedder, else the embedder's default",
        "source": "synthface's filter thresholds (docs/filter.md)",
    },
    "nearest_other": {
        "definition": "for each identity centre, the cosine of the nearest other identity centre (lower: identities "
        "further apart)",
        "source": "inter-class separability, as synthetic face datasets are compared (DCFace, Vec2Face)",
    },
    "duplicates": {
        "definition": "identities whose centre is at least duplicate_threshold from an earlier identity's centre: the "
        "filter's merge threshold when inspect embeds with the filter embedder, else the identity threshold",
        "source": "synthface's separation check (docs/filter.md)",
    },
    "spread": {
        "definition": "1 - mean cosine to the identity centre, per identity with 2+ images (0 = no variation)",
        "source": "intra-class variation in face-embedding space",
    },
    "pose": {
        "definition": "within-identity standard deviation of yaw, pitch and roll (degrees), each estimated from MTCNN's "
        "five landmarks on the stored crop: roll is the eye line's angle; yaw the nose's offset from the "
        "eye-mouth midline over half the eye distance; pitch the nose's height between eye and mouth lines "
        "against the ArcFace template's; both through arcsin",
        "source": "five-point geometry (synthface.dataset.quality.head_pose); landmarks by MTCNN (Zhang et al. 2016)",
    },
    "detection_rate": {
        "definition": "fraction of the stored crops in which the detector finds a face",
        "source": "MTCNN (Zhang et al. 2016), facenet-pytorch's bundled weights",
    },
    "detection_confidence": {
        "definition": "the detector's face probability of the faces found",
        "source": "MTCNN (Zhang et al. 2016), facenet-pytorch's bundled weights",
    },
    "frechet_distance": {
        "definition": "Frechet distance between Gaussians fitted to this set's and the reference set's normalised "
        "embeddings: |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2); 0 = same mean and covariance",
        "source": "Heusel et al. 2017 (FID), computed on face embeddings instead of Inception features",
    },
    "knn_precision": {
        "definition": "fraction of this set's embeddings inside the k-NN ball (radius: distance to the k-th nearest "
        "neighbour) of some reference embedding: how much of the set looks like real faces",
        "source": "improved precision, Kynkaanniemi et al. 2019, in face-embedding space",
    },
    "knn_recall": {
        "definition": "fraction of the reference embeddings inside the k-NN ball of some embedding of this set: how "
        "much of the real face space the set covers",
        "source": "improved recall, Kynkaanniemi et al. 2019, in face-embedding space",
    },
    "variation": {
        "definition": "what the run's variation controls drew per stored image: the conditioning vector's cosine to its "
        "identity, the guidance scale, and whether it started from a style image (shard columns condition_cosine, "
        "guidance_scale, style)",
        "source": "synthface generate's variation section (docs/generate.md)",
    },
    "leakage": {
        "definition": "cosine of each identity centre to its nearest real person of the gallery",
        "source": "synthface's leakage check (docs/filter.md)",
    },
}


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


def variation_figures(rows: Any) -> dict[str, Any] | None:
    """What the run's variation controls drew for the stored images (None when none was on)."""
    if VARIATION_COLUMNS[0] not in rows.column_names:
        return None
    style = np.asarray(rows.column("style").to_numpy(), np.int64)
    return {
        "condition_cosine": quantiles(rows.column("condition_cosine").to_numpy(zero_copy_only=False)),
        "guidance_scale": quantiles(rows.column("guidance_scale").to_numpy(zero_copy_only=False)),
        "style_started": float((style >= 0).mean()) if len(style) else 0.0,
        "styles_used": int(len(np.unique(style[style >= 0]))),
    }


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


def by_yaw(yaw: np.ndarray, limit: int) -> np.ndarray:
    """Indices of up to ``limit`` images in increasing yaw, images without a face (NaN) last. With more
    faces than ``limit`` they are thinned evenly over that order, so the row still spans the
    identity's pose range; faceless images only fill what faces leave free."""
    yaw = np.asarray(yaw, np.float64)
    face = np.flatnonzero(np.isfinite(yaw))
    face = face[np.argsort(yaw[face], kind="stable")]
    if len(face) > limit:
        face = face[np.unique(np.linspace(0, len(face) - 1, limit).round().astype(int))]
    return np.concatenate([face, np.flatnonzero(~np.isfinite(yaw))])[:limit]


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


def _hist_ax(ax: Any, series: dict[str, np.ndarray], title: str, xlabel: str, lines: dict[str, float] | None = None,
             unit: str = "images") -> None:  # fmt: skip
    """Overlaid density histograms on ``ax``; each legend entry counts its values in ``unit``."""
    for name, values in series.items():
        values = np.asarray(values, np.float64)
        values = values[np.isfinite(values)]
        if len(values):
            ax.hist(
                values,
                bins=50,
                range=(-1, 1) if "cos" in xlabel else None,
                alpha=0.6,
                density=True,
                label=f"{name} ({len(values)} {unit})",
            )
    for name, x in (lines or {}).items():
        ax.axvline(x, color="k", linestyle="--", linewidth=1)
        ax.text(x, ax.get_ylim()[1] * 0.9, f" {name} {x:g}", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _hist_png(path: Path, *panels: tuple[Any, ...]) -> Path:
    """A PNG of one or more :func:`_hist_ax` panels (each the arguments after ``ax``), two a row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(2, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4 * rows), dpi=100, squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        _hist_ax(ax, *panel)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def default_embedder(config: dict[str, Any]) -> str:
    """The dataset's filter embedder when its filter ran (its weights are here), else the offline default."""
    from synthface.config import DEFAULT_EMBEDDER

    filt = config.get("filter") or {}
    return str(filt.get("embedder") or DEFAULT_EMBEDDER) if filt.get("enabled") else DEFAULT_EMBEDDER


def quality_thresholds(config: dict[str, Any], embedder: str) -> tuple[float, float]:
    """(identity threshold, duplicate threshold) for the quality figures: the dataset's filter threshold
    and merge threshold when the filter ran with ``embedder``, else that embedder's default threshold for both."""
    from synthface.faces.embedders import default_threshold

    filt = config.get("filter") or {}
    same = bool(filt.get("enabled")) and filt.get("embedder") == embedder
    threshold = float(filt["threshold"]) if same and filt.get("threshold") is not None else default_threshold(embedder)
    merge = float(filt["merge_threshold"]) if same and filt.get("merge_threshold") is not None else threshold
    return threshold, merge


def get_detector(detector: Any, device: str = "auto") -> tuple[str, Any]:
    """(name, detector) for the pose and detection figures: "mtcnn", "none" (skip them) or an object with
    ``detect(images) -> [Face | None]`` (named by its class)."""
    if detector is None or detector == "none":
        return "none", None
    if isinstance(detector, str):
        if detector != "mtcnn":
            raise InputError(f"unknown detector '{detector}': use mtcnn or none")
        from synthface.faces.align import FaceDetector

        return "mtcnn", FaceDetector(device=device)
    return type(detector).__name__, detector


def inspect_dataset(
    src: str | Path,
    out: str | Path | None = None,
    *,
    embedder: str | None = None,
    max_identities: int = 100,
    sheet_identities: int = 16,
    sheet_images: int = 8,
    gallery: str | None = None,
    reference: str | Path | None = None,
    reference_images: int = 2000,
    k: int = 3,
    detector: Any = "mtcnn",
    card: bool = True,
    seed: int = 0,
    device: str = "auto",
    progress: Progress | None = None,
    allow_partial: bool = False,
) -> dict[str, Any]:
    """Write the report (JSON, PNGs, report.html) of the dataset in ``src`` to ``out`` (default SRC/inspect); returns it.

    ``embedder`` "none" skips the similarity histograms and the embedding figures (no embedder
    needed); None picks :func:`default_embedder`. ``reference`` is a folder of aligned real faces
    (one sub-folder per person; or shards, or a RecordIO file) to compare with: up to
    ``reference_images`` of its images (people in a seeded order, each with at most as many images as
    the dataset's largest sampled identity), resized to the dataset's crop size, give the Frechet
    distance and k-NN precision/recall (``k``) and the same figures as the dataset's.
    ``detector`` (see :func:`get_detector`) finds the faces and landmarks of the pose and detection
    figures. With ``card``, the quality figures also go into the dataset card (SRC/README.md, when
    synthface wrote it) of a complete dataset. An incomplete dataset is refused unless
    ``allow_partial`` (then the report covers the committed shards). The embedder, the gallery, the
    reference folder and the detector are loaded before anything is written, and the files move into
    ``out`` only once all of them are written: a failure leaves no partial report.
    """
    src = Path(src)
    if not src.is_dir():
        raise InputError(f"dataset {src} not found: pass the --out directory of `synthface generate`")
    out = Path(out) if out is not None else src / "inspect"
    shards, rows = _read_shards(src, allow_partial)
    config: dict[str, Any] = {}
    if (src / "config.yaml").is_file():
        from synthface.config import read_resolved

        try:
            config = read_resolved(src / "config.yaml")
        except Exception:  # noqa: BLE001 - yaml and decoding errors alike
            raise InputError(f"{src}/config.yaml is unreadable: regenerate the dataset or restore the file") from None
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
        from synthface.dataset.reader import open_training_set

        ref_data = open_training_set(reference, size=None, min_images=1)
    det_name, det = get_detector(detector, device)
    inputs = _Inputs(config=config, name=name, emb_model=emb_model, real=real, gallery=gallery, ref_data=ref_data,
                     reference=str(reference) if reference else None, reference_images=reference_images, k=k,
                     det_name=det_name, det=det, max_identities=max_identities, sheet_identities=sheet_identities,
                     sheet_images=sheet_images, seed=seed)  # fmt: skip
    with staged_folder(out) as stage:
        report = _report(src, out, stage, shards, rows, inputs, progress_or_null(progress))
    if card and not allow_partial:
        from synthface.dataset.card import write_quality_section

        path = write_quality_section(src, report, out)
        if path is not None:
            report["files"]["card"] = str(path)
    return report


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
    ident_path = src / "identities.parquet"
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
        path = _hist_png(
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
        scores = np.full(len(items), np.nan)
        bar.start(len(crops), f"inspect: detecting faces with {inp.det_name}")
        faces: list[Any] = []
        for start in range(0, len(crops), 64):
            faces += inp.det.detect(crops[start : start + 64])
            bar.advance(len(crops[start : start + 64]))
        bar.finish()
        found = np.array([f is not None for f in faces], bool)
        if found.any():
            poses[found] = q.head_pose(np.stack([np.asarray(f.landmarks, np.float64) for f in faces if f is not None]))
            scores[found] = [float(f.score) for f in faces if f is not None]
        quality["detection"] = {"images": len(crops), "detected": int(found.sum()), "rate": float(found.mean()),
                                "confidence": quantiles(scores)}  # fmt: skip
        if found.any():
            quality["pose"] = {"images": int(found.sum()), **q.pose_spread(poses[found], lab[found])}

    # similarity histograms and the embedding figures
    emb = None
    centres = None
    cos_centre = np.full(len(items), np.nan)
    if emb_model is not None and crops:
        emb = _embed(emb_model, crops, bar, f"inspect: embedding with {name}")
        intra, inter = similarity_pairs(emb, lab)
        report["similarity"] = {"embedder": name, "identities": len(sampled), "images": len(crops),
                                "intra": quantiles(intra), "inter": quantiles(inter)}  # fmt: skip
        path = _hist_png(stage / "similarity.png", ({"intra-identity": intra, "inter-identity": inter},
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
        ref_crops, ref_labels = _reference_crops(inp.ref_data, inp.reference_images, inp.seed, crops[0].shape[0],
                                                 int(np.bincount(lab).max()))  # fmt: skip
        ref_emb = _embed(emb_model, ref_crops, bar, f"inspect: embedding the reference with {name}")
        quality["reference"] = _reference_figures(emb, ref_emb, ref_labels, inp, *quality_thresholds(config, name))
    path = _quality_figures(stage, quality, emb, lab, cos_centre, poses, ref_emb, ref_labels)
    if path is not None:
        report["files"]["quality"] = written(path)
        figures["quality metrics"] = path
    per_identity = _per_identity(rows, sampled, lab, emb, cos_centre, poses, quality)
    quality["per_identity"] = per_identity
    quality["definitions"] = QUALITY_DEFINITIONS
    report["quality"] = quality

    # contact sheet: a row per identity, images in increasing estimated yaw
    sheet: list[SheetRow] = []
    for entry in per_identity[: inp.sheet_identities]:
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
        cos = np.asarray(identities.column("leakage_cosine").to_numpy(zero_copy_only=False), np.float64)
        thr = (json.loads((src / "summary.json").read_text()).get("filter", {}).get("leakage", {}).get("threshold")
               if (src / "summary.json").is_file() else None)  # fmt: skip
        if np.isfinite(cos).any():
            leak = {"source": "generate", **leakage_summary(cos, float(thr) if thr is not None else 1.0), "threshold": thr}
    if inp.real is not None and centres is not None:
        cos = (centres @ inp.real.persons.T).max(1)
        leak = {"source": f"inspect --gallery {inp.gallery}", "embedder": name, **leakage_summary(cos, 1.0)}
        leak.pop("above_threshold", None)
    if leak:
        report["leakage"] = leak
        values = np.asarray(cos, np.float64)
        path = _hist_png(stage / "leakage.png", ({"nearest real person": values}, "identity centre vs nearest real person",
                                                 "cosine", None, "identities"))  # fmt: skip
        report["files"]["leakage"] = written(path)
        figures["leakage"] = path
    else:
        report["leakage"] = {"note": "no gallery: pass --gallery EMBEDDINGS.parquet (from `synthface embed`) to measure it"}
    report["files"]["html"] = str(out / REPORT_HTML)
    report["files"]["report"] = str(out / REPORT_FILE)
    write_html(stage / REPORT_HTML, report, sheet, figures)
    (stage / REPORT_FILE).write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return report


def _reference_crops(data: Any, limit: int, seed: int, side: int, per_person: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Up to ``limit`` reference images as uint8 HWC at ``side`` px: people in a seeded order, at most
    ``per_person`` images each; their labels."""
    from PIL import Image

    order = np.random.default_rng(seed).permutation(int(data.labels.max()) + 1 if len(data) else 0)
    by_person: dict[int, list[int]] = {}
    for i, label in enumerate(data.labels):
        by_person.setdefault(int(label), []).append(i)
    chosen: list[int] = []
    for person in order:
        chosen += by_person.get(int(person), [])[: max(1, per_person)][: limit - len(chosen)]
        if len(chosen) >= limit:
            break
    crops = []
    for i in chosen:
        img = data[i][0].permute(1, 2, 0).numpy()  # the readers decode to uint8 (3, H, W)
        if img.shape[:2] != (side, side):
            img = np.asarray(Image.fromarray(img).resize((side, side), Image.Resampling.BICUBIC))
        crops.append(np.ascontiguousarray(img, np.uint8))
    return crops, np.asarray(data.labels[chosen], np.int64)


def _embed(model: Any, crops: list[np.ndarray], bar: Progress, what: str, chunk: int = 256) -> np.ndarray:
    """Embeddings of template crops, with progress."""
    from synthface.faces.embedders import embed_aligned

    bar.start(len(crops), what)
    out = []
    for start in range(0, len(crops), chunk):
        out.append(embed_aligned(model, crops[start : start + chunk]))
        bar.advance(len(out[-1]))
    bar.finish()
    return np.concatenate(out) if out else np.zeros((0, model.dim), np.float32)


def _with_several(labels: np.ndarray) -> np.ndarray:
    """Mask of the images whose label has 2+ images."""
    ids, counts = np.unique(labels, return_counts=True)
    return np.isin(labels, ids[counts >= 2])


def _reference_figures(emb: np.ndarray, ref_emb: np.ndarray, ref_labels: np.ndarray, inp: _Inputs, threshold: float,
                       duplicate: float) -> dict[str, Any]:  # fmt: skip
    """The distances of the dataset's embeddings to the reference's, and the reference's own figures
    (consistency and spread over its people with 2+ images, separability over all of them)."""
    out: dict[str, Any] = {"path": inp.reference, "embedder": inp.name, "images": int(len(ref_emb)),
                           "identities": int(len(np.unique(ref_labels))), "dataset_images": int(len(emb))}  # fmt: skip
    notes = []
    if min(len(emb), len(ref_emb)) >= 2:
        out["frechet_distance"] = q.frechet_distance(emb, ref_emb)
    else:
        notes.append("Frechet distance: needs 2+ images in each set")
    if min(len(emb), len(ref_emb)) > inp.k:
        out["knn"] = q.knn_precision_recall(emb, ref_emb, inp.k)
    else:
        notes.append(f"k-NN precision/recall: needs more than k={inp.k} images in each set")
    several = _with_several(ref_labels)
    figures: dict[str, Any] = {"separability": q.separability(ref_emb, ref_labels, duplicate)}
    if several.any():
        figures["consistency"] = q.consistency(ref_emb[several], ref_labels[several], threshold)
        figures["spread"] = q.embedding_spread(ref_emb[several], ref_labels[several])
    out["figures"] = figures
    if notes:
        out["notes"] = notes
    return out


def _quality_figures(stage: Path, quality: dict[str, Any], emb: np.ndarray | None, lab: np.ndarray, cos_centre: np.ndarray,
                     poses: np.ndarray, ref_emb: np.ndarray | None, ref_labels: np.ndarray | None) -> Path | None:  # fmt: skip
    """quality.png: each image vs its identity centre, each identity vs the nearest other (beside the
    reference's, when given), and the head pose distribution; None when there is nothing to draw."""
    panels: list[tuple[Any, ...]] = []
    if emb is not None:
        cons, near = {"this dataset": cos_centre}, {"this dataset": q.nearest_other(emb, lab)[1]}
        if ref_emb is not None and ref_labels is not None:
            several = _with_several(ref_labels)
            if several.any():
                cons["reference"] = q.cos_to_centre(ref_emb[several], ref_labels[several])[1]
            near["reference"] = q.nearest_other(ref_emb, ref_labels)[1]
        thr = quality["consistency"].get("threshold")
        panels.append((cons, "identity consistency: each image vs its identity centre", "cosine",
                       {"threshold": thr} if thr is not None else None, "images"))  # fmt: skip
        dup = quality["separability"].get("duplicate_threshold")
        panels.append((near, "separability: each identity centre vs the nearest other", "cosine",
                       {"duplicate": dup} if dup is not None else None, "identities"))  # fmt: skip
    found = np.isfinite(poses[:, 0])
    if found.any():
        panels.append(({n: poses[found, i] for i, n in enumerate(("yaw", "pitch", "roll"))},
                       "head pose from five landmarks", "degrees", None, "images"))  # fmt: skip
    return _hist_png(stage / "quality.png", *panels) if panels else None


def _per_identity(rows: Any, sampled: list[int], lab: np.ndarray, emb: np.ndarray | None, cos_centre: np.ndarray,
                  poses: np.ndarray, quality: dict[str, Any]) -> list[dict[str, Any]]:  # fmt: skip
    """One record per sampled identity: label, plan identity, images, and its own figures where measured."""
    table_labels = rows.column("label").to_pylist()
    identity_of = dict(zip(table_labels, rows.column("identity").to_pylist()))
    nearest = dict(zip(*q.nearest_other(emb, lab))) if emb is not None and len(lab) else {}
    out = []
    for label in sampled:
        idx = np.flatnonzero(lab == label)
        entry: dict[str, Any] = {"label": label, "identity": int(identity_of[label]), "images": int(len(idx))}
        if emb is not None and len(idx):
            entry["cos_to_centre"] = float(cos_centre[idx].mean())
            near = float(nearest.get(label, np.nan))
            entry["nearest_other"] = near if np.isfinite(near) else None
        if "detection" in quality:
            yaw = poses[idx, 0][np.isfinite(poses[idx, 0])]
            entry["detected"] = int(len(yaw))
            entry["yaw_std"] = float(yaw.std()) if len(yaw) >= 2 else None
            entry["yaw_range"] = [float(yaw.min()), float(yaw.max())] if len(yaw) else None
        out.append(entry)
    return out
