"""Face embeddings as arrays and as Parquet columns: unit length, and the fixed-size-list column they are stored in."""

from __future__ import annotations

from typing import Any

import numpy as np


def l2n(x: Any, dtype: Any = np.float64) -> np.ndarray:
    """Rows (the last axis) scaled to unit length, computed in ``dtype``; a zero row stays zero."""
    x = np.asarray(x, dtype=dtype)
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(dtype, copy=False)


def l2n_or_nan(x: Any) -> np.ndarray:
    """Rows scaled to unit length in float64; a row with zero or non-finite norm becomes NaN (a failed image)."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = x / norms
    out[~np.isfinite(norms[..., 0]) | (norms[..., 0] == 0)] = np.nan
    return out


def fixed_list_array(matrix: Any) -> Any:
    """An (N, D) matrix as a pyarrow fixed-size-list array of float32 (D per row), how embeddings are stored."""
    import pyarrow as pa

    matrix = np.asarray(matrix)
    flat = pa.array(np.ascontiguousarray(matrix, np.float32).reshape(-1), pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, int(matrix.shape[1]))


def fixed_list(column: Any, dtype: Any = np.float32) -> np.ndarray:
    """A fixed-size-list column (chunked or not) as an (N, D) array of ``dtype``."""
    col = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    n, d = len(col), col.type.list_size
    return np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype).reshape(n, d)
