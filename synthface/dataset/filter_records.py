"""The filter's records of a dataset, as ``generate`` writes them and ``inspect`` reads them back.

With filtering on, every shard ``data/train-SSSSS-of-NNNNN.parquet`` has a record beside it,
``filter/train-SSSSS-of-NNNNN.parquet``: one row per identity that reached the filter (its
candidates, which passed, which were kept and why, the embedding centre); the shard's commit
marker names it with its sha256. The records are written by :mod:`synthface.filtering`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from synthface.dataset.layout import FILTER_DIR
from synthface.errors import InputError


def read_records(out: Path) -> pa.Table | None:
    """Every filter record of a dataset (one row per identity that reached the filter), or None."""
    files = sorted((Path(out) / FILTER_DIR).glob("train-*.parquet"))
    if not files:
        return None
    try:
        return pa.concat_tables([pq.read_table(f) for f in files]).sort_by("identity")
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types on a bad file
        raise InputError(f"cannot read the filter records in {Path(out) / FILTER_DIR}: {exc}") from None


def leakage_summary(cos: np.ndarray, threshold: float) -> dict[str, Any]:
    """Distribution of each identity's cosine to its nearest real person."""
    cos = np.asarray(cos, np.float64)
    cos = cos[np.isfinite(cos)]
    if not len(cos):
        return {"identities": 0}
    q = np.quantile(cos, [0.0, 0.5, 0.9, 0.99, 1.0])
    hist, edges = np.histogram(cos, bins=20, range=(-1.0, 1.0))
    return {
        "identities": int(len(cos)),
        "above_threshold": int((cos > threshold).sum()),
        "min": float(q[0]), "median": float(q[1]), "p90": float(q[2]), "p99": float(q[3]), "max": float(q[4]),
        "histogram": {"edges": [round(float(e), 3) for e in edges], "counts": hist.tolist()},
    }  # fmt: skip
