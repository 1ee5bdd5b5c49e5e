"""Inspect a generated dataset: counts, acceptance, similarity histograms, contact sheet, leakage report.

Works on any directory written by ``synthface generate`` (filter on or off). Figures come from the
committed shards, ``identities.parquet`` and, with filtering on, the per-candidate filter records.
Intra-identity cosines (every pair of images of one identity) and inter-identity cosines (pairs of
images of different identities: all of them, or a fixed random subset of large sets) are measured
by embedding the stored template crops of up to ``max_identities`` identities with an embedder
(default: the filter embedder when the filter ran, else the offline default, dlib). Stored crops
are the tight ArcFace template, so an embedder trained on another crop (dlib) reads them less well
than it reads the original renders: compare datasets with the same embedder, not these cosines
with another tool's.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from synthface.dataset.quality import quantiles
from synthface.atomic import staged_files
from synthface.embeddings import l2n
from synthface.errors import InputError
from synthface.figures import save_figure
from synthface.runtime import Progress, progress_or_null

REPORT_FILE = "inspect.json"


def _read_shards(src: Path, allow_partial: bool = False) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from synthface.dataset.shards import committed_shards

    shards = committed_shards(src, allow_partial=allow_partial)
    if not shards:
        raise InputError(f"no committed shards in {src}: pass the --out directory of `synthface generate`")
    tables = [pq.read_table(p, columns=["label", "identity", "sample", "id_score", "det_score"]) for p in shards]
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


def contact_sheet(images: dict[int, list[tuple[int, bytes]]], path: Path, rows: int, cols: int, tile: int = 112) -> Path:
    """One row per identity (label order), up to ``cols`` images each; as wide as its longest row."""
    from PIL import Image, ImageDraw

    labels = sorted(images)[:rows]
    cols = max(1, min(cols, max((len(images[k]) for k in labels), default=1)))
    pad = 40
    sheet = Image.new("RGB", (pad + cols * tile, max(1, len(labels)) * tile), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, label in enumerate(labels):
        draw.text((2, r * tile + tile // 2 - 5), str(label), fill=(0, 0, 0))
        for c, (_, data) in enumerate(images[label][:cols]):
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


def _hist_png(
    path: Path,
    series: dict[str, np.ndarray],
    title: str,
    xlabel: str,
    lines: dict[str, float] | None = None,
    unit: str = "images",
) -> Path:
    """Overlaid density histograms; each legend entry counts its values in ``unit``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
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
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def default_embedder(config: dict[str, Any]) -> str:
    """The dataset's filter embedder when its filter ran (its weights are here), else the offline default."""
    from synthface.config import DEFAULT_EMBEDDER

    filt = config.get("filter") or {}
    return str(filt.get("embedder") or DEFAULT_EMBEDDER) if filt.get("enabled") else DEFAULT_EMBEDDER


def inspect_dataset(
    src: str | Path,
    out: str | Path | None = None,
    *,
    embedder: str | None = None,
    max_identities: int = 100,
    sheet_identities: int = 16,
    sheet_images: int = 8,
    gallery: str | None = None,
    device: str = "auto",
    progress: Progress | None = None,
    allow_partial: bool = False,
) -> dict[str, Any]:
    """Write the report (JSON + PNGs) of the dataset in ``src`` to ``out`` (default SRC/inspect); returns it.

    ``embedder`` "none" skips the similarity histograms (no embedder needed); None picks
    :func:`default_embedder`. An incomplete dataset is refused unless ``allow_partial`` (then the
    report covers the committed shards). The embedder and the gallery are loaded before anything is
    written, and the files move into ``out`` only once all of them are written: a failure leaves no
    partial report.
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
    with staged_files(out) as stage:
        report = _report(src, out, stage, shards, rows, config, name, emb_model, real, gallery, max_identities,
                         sheet_identities, sheet_images, progress_or_null(progress))  # fmt: skip
    return report


def _report(
    src: Path,
    out: Path,
    stage: Path,
    shards: list[Path],
    rows: Any,
    config: dict[str, Any],
    name: str,
    emb_model: Any,
    real: Any,
    gallery: str | None,
    max_identities: int,
    sheet_identities: int,
    sheet_images: int,
    bar: Progress,
) -> dict[str, Any]:
    """The report's figures and JSON, written into ``stage``; the paths it records are under ``out``."""
    import pyarrow.parquet as pq

    from synthface.dataset.filter_records import leakage_summary, read_records

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
        report["files"]["candidate_scores"] = written(
            _hist_png(
                stage / "candidate_scores.png",
                {
                    "all candidates": np.array(ids, np.float64),
                    "kept": rows.column("id_score").to_numpy(zero_copy_only=False),
                },  # fmt: skip
                "identity score of candidates",
                "cosine to anchor",
                {"threshold": float(threshold)} if threshold is not None else None,
            )
        )

    # contact sheet
    all_labels = np.unique(labels[valid])
    step = max(1, len(all_labels) // max(1, max_identities))
    sampled = set(int(x) for x in all_labels[::step][:max_identities])
    sheet_labels = set(int(x) for x in all_labels[:sheet_identities])
    bar.start(None, "inspect: reading images")
    images = _load_images(shards, sampled | sheet_labels)
    report["files"]["contact_sheet"] = written(
        contact_sheet(
            {k: images[k] for k in sheet_labels if k in images}, stage / "contact_sheet.png", sheet_identities, sheet_images
        )
    )
    bar.finish()

    # similarity histograms
    centres = None
    if emb_model is not None and sampled:
        from synthface.faces.embedders import embed_aligned

        crops, crop_labels = [], []
        for label in sorted(sampled):
            for _, data in images.get(label, []):
                crops.append(_decode(data))
                crop_labels.append(label)
        bar.start(len(crops), f"inspect: embedding with {name}")
        emb = embed_aligned(emb_model, crops) if crops else np.zeros((0, emb_model.dim))
        bar.advance(len(crops))
        bar.finish()
        lab = np.asarray(crop_labels)
        intra, inter = similarity_pairs(emb, lab)
        report["similarity"] = {"embedder": name, "identities": len(sampled), "images": len(crops),
                                "intra": quantiles(intra), "inter": quantiles(inter)}  # fmt: skip
        report["files"]["similarity"] = written(
            _hist_png(
                stage / "similarity.png",
                {"intra-identity": intra, "inter-identity": inter},
                f"pairwise cosine ({name}, {len(crops)} images of {len(sampled)} identities)",
                "cosine",
                unit="pairs",
            )
        )
        centres = np.stack([emb[lab == k].mean(0) for k in sorted(set(crop_labels))]) if crops else None
        if centres is not None and len(centres) > 1:
            c = l2n(centres, centres.dtype)
            g = c @ c.T
            np.fill_diagonal(g, -np.inf)
            report["similarity"]["nearest_identity_centre"] = quantiles(g.max(1))

    # leakage
    leak: dict[str, Any] = {}
    if identities is not None and "leakage_cosine" in identities.column_names:
        cos = np.asarray(identities.column("leakage_cosine").to_numpy(zero_copy_only=False), np.float64)
        thr = (json.loads((src / "summary.json").read_text()).get("filter", {}).get("leakage", {}).get("threshold")
               if (src / "summary.json").is_file() else None)  # fmt: skip
        if np.isfinite(cos).any():
            leak = {"source": "generate", **leakage_summary(cos, float(thr) if thr is not None else 1.0), "threshold": thr}
    if real is not None and centres is not None:
        c = l2n(centres, centres.dtype)
        cos = (c @ real.persons.T).max(1)
        leak = {"source": f"inspect --gallery {gallery}", "embedder": name, **leakage_summary(cos, 1.0)}
        leak.pop("above_threshold", None)
    if leak:
        report["leakage"] = leak
        values = np.asarray(cos, np.float64)
        report["files"]["leakage"] = written(
            _hist_png(
                stage / "leakage.png",
                {"nearest real person": values},
                "identity centre vs nearest real person",
                "cosine",
                unit="identities",
            )
        )
    else:
        report["leakage"] = {"note": "no gallery: pass --gallery EMBEDDINGS.parquet (from `synthface embed`) to measure it"}
    report["files"]["report"] = str(out / REPORT_FILE)
    (stage / REPORT_FILE).write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return report
