"""Embeddings of a folder of faces written to Parquet (path, identity, embedding, det_score, status)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from synthface.atomic import atomic_file
from synthface.config import EmbedRecipe
from synthface.embeddings import fixed_list, fixed_list_array
from synthface.faces.align import FaceDetector
from synthface.files import list_images
from synthface.faces.batch import embed_files
from synthface.faces.embedders import get_embedder
from synthface.runtime import Progress


def embeddings_table(paths: list[str], identities: list[str], emb: np.ndarray, det: np.ndarray, status: list[str]) -> pa.Table:
    return pa.table(
        {
            "path": pa.array(paths, pa.string()),
            "identity": pa.array(identities, pa.string()),
            "embedding": fixed_list_array(emb),
            "det_score": pa.array(det.astype(np.float32), pa.float32()),
            "status": pa.array(status, pa.string()),
        }
    )


def read_embeddings(path: str | Path, ok_only: bool = True) -> tuple[np.ndarray, list[str], list[str]]:
    """(embeddings (N, D) float32, identities, paths) from a Parquet written by `synthface embed`."""
    from synthface.errors import InputError

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputError(f"cannot read embeddings Parquet {path}: {type(exc).__name__}") from None
    if "embedding" not in table.column_names:
        raise InputError(f"{path} has no 'embedding' column (write it with `synthface embed`)")
    if ok_only and "status" in table.column_names:
        table = table.filter(pa.compute.equal(table["status"], "ok"))
    emb = fixed_list(table["embedding"])
    ids = table["identity"].to_pylist() if "identity" in table.column_names else [""] * len(emb)
    paths = table["path"].to_pylist() if "path" in table.column_names else [""] * len(emb)
    return emb, ids, paths


def embed_folder(src: str | Path, out: str | Path, recipe: EmbedRecipe, progress: Progress | None = None) -> dict[str, Any]:
    src, out = Path(src), Path(out)
    files = list_images(src)
    from synthface.errors import InputError

    if not files:
        raise InputError(f"no images found under {src}")
    embedder = get_embedder(recipe.embedder, device=recipe.device, weights=recipe.weights)
    detector = None if recipe.aligned else FaceDetector(device=recipe.device, select=recipe.select)
    res = embed_files(
        files, embedder, detector, aligned=recipe.aligned, batch_size=recipe.batch_size, workers=2, progress=progress
    )
    counts = res.counts()
    if counts["ok"] == 0:
        how = "check they are aligned crops" if recipe.aligned else "check it holds photos of faces"
        raise InputError(
            f"no face was embedded in {src} (no face {counts['no_face']}, too small {counts['too_small']}, unreadable "
            f"{counts['unreadable']} of {len(files)}): {how}; nothing was written"
        )
    rel = [str(f.relative_to(src)) for f in files]
    ids = [str(Path(r).parent) if Path(r).parent != Path(".") else Path(r).stem for r in rel]
    emb = np.nan_to_num(res.embeddings, nan=0.0)
    table = embeddings_table(rel, ids, emb, res.det_scores, res.status)
    # the embedder travels with the file: a gallery of another embedder is refused by name (identities.py)
    meta = {"embedder": embedder.name, "dim": embedder.dim, "aligned": bool(recipe.aligned)}
    table = table.replace_schema_metadata({b"synthface": json.dumps(meta).encode()})
    with atomic_file(out) as handle:
        pq.write_table(table, handle)
    return {
        "src": str(src),
        "out": str(out),
        "embedder": embedder.name,
        "dim": embedder.dim,
        "total": len(files),
        "embedded": counts["ok"],
        "no_face": counts["no_face"],
        "too_small": counts["too_small"],
        "unreadable": counts["unreadable"],
    }
