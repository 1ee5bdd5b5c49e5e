"""Seeded subsets of a synthface dataset: so many identities, so many images per identity.

:func:`subset_rows` picks the rows; the choice is nested, so the subsets of one seed grow into each
other: identities are taken in one seeded order (the first N of it), and each identity's images
in its own seeded order (the first K of them; an identity with fewer keeps all it has). 100
identities are among the 300, 2 images per identity among the 4. Rows with a negative label
(no identity) are never picked.

:func:`write_subset` writes the picked rows of :func:`source_table` (every committed shard of a
dataset), every column as it was and the labels renumbered contiguous, as a dataset of one
committed shard (``data/train-00000-of-00001.parquet`` and its marker) plus ``subset.json`` (what
was asked, what it holds, a digest of the rows), all or nothing: what any reader of shards
(``synthface evaluate``, ``datasets``) reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from synthface.errors import InputError

SUBSET_FILE = "subset.json"


def subset_rows(labels: np.ndarray, identities: int | None, per_identity: int | None, seed: int) -> np.ndarray:
    """Sorted indices of the rows kept: ``identities`` identities (None: all), at most
    ``per_identity`` images each (None: all), chosen with ``seed``."""
    labels = np.asarray(labels, dtype=np.int64)
    if identities is not None and identities < 1:
        raise InputError(f"a subset needs at least one identity, got {identities}")
    if per_identity is not None and per_identity < 1:
        raise InputError(f"a subset needs at least one image per identity, got {per_identity}")
    values = np.unique(labels[labels >= 0])
    rng = np.random.default_rng(seed)
    order = rng.permutation(values)
    # every identity's image order is drawn, chosen or not, so K's rows do not depend on N
    image_order = {int(v): rng.permutation(np.flatnonzero(labels == v)) for v in values}
    chosen = order if identities is None else order[:identities]
    rows = [image_order[int(v)][:per_identity] for v in chosen]
    return np.sort(np.concatenate(rows)) if rows else np.zeros(0, dtype=np.int64)


def source_table(source: str | Path) -> Any:
    """Every row of ``source``'s committed shards, in the order a reader reads them (a pyarrow Table)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from synthface.dataset.shards import committed_shards

    shards = committed_shards(source)
    if not shards:
        raise InputError(f"no committed shards in {source}: a subset is taken from a synthface dataset")
    return pa.concat_tables([pq.read_table(p) for p in shards], promote_options="default")


def rows_digest(rows: np.ndarray) -> str:
    """The sha256 of ``rows`` as int64: it names a subset (equal digests, equal rows)."""
    import hashlib

    return hashlib.sha256(np.asarray(rows, dtype=np.int64).tobytes()).hexdigest()


def subset_summary(labels: np.ndarray, rows: np.ndarray) -> dict[str, Any]:
    """What a subset of ``rows`` holds (``labels``: the whole set's label column): ``identities``,
    ``images``, ``images_per_identity`` (mean, min, max) and ``rows_sha256`` (:func:`rows_digest`)."""
    rows = np.asarray(rows, dtype=np.int64)
    counts = np.unique(np.asarray(labels)[rows], return_counts=True)[1]
    return {
        "identities": int(len(counts)),
        "images": int(len(rows)),
        "images_per_identity": {"mean": round(float(counts.mean()), 3), "min": int(counts.min()), "max": int(counts.max())},
        "rows_sha256": rows_digest(rows),
    }


def write_subset(table: Any, rows: np.ndarray, out: str | Path, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``rows`` of ``table`` (from :func:`source_table`) into ``out`` (replaced whole), labels
    renumbered contiguous; returns what ``subset.json`` holds: ``info`` plus ``identities``,
    ``images``, ``images_per_identity`` (mean, min, max) and ``rows_sha256``."""
    import pyarrow as pa

    from synthface.atomic import atomic_write_json, staged_folder
    from synthface.dataset.writer import MARKER_FORMAT, marker_path, write_parquet

    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        raise InputError(f"an empty subset cannot be written to {out}")
    picked = table.take(pa.array(rows))
    _, labels = np.unique(picked.column("label").to_numpy(), return_inverse=True)
    picked = picked.set_column(picked.schema.get_field_index("label"), "label", pa.array(labels.astype(np.int64)))
    summary = {**(info or {}), **subset_summary(table.column("label").to_numpy(), rows)}
    with staged_folder(Path(out), replace=True) as stage:
        parquet = stage / "data" / "train-00000-of-00001.parquet"
        parquet.parent.mkdir(parents=True)
        sha, size = write_parquet(parquet, picked)
        marker = {"format": MARKER_FORMAT, "shard": parquet.stem, "index": 0, "total": 1, "file": parquet.name,
                  "rows": len(labels), "sha256": sha, "bytes": size, "labels": [0, summary["identities"] - 1]}  # fmt: skip
        atomic_write_json(marker_path(parquet), marker)
        atomic_write_json(stage / SUBSET_FILE, summary)
    return summary
