"""What every embedder is: the :class:`Embedder` protocol and the check of its inputs.

The embedders themselves and their registry are in :mod:`synthface.faces.embedders`; SFace's in
:mod:`synthface.faces.sface`.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from synthface.errors import InputError


@runtime_checkable
class Embedder(Protocol):
    name: str
    dim: int

    def embed(self, images: Sequence[np.ndarray], landmarks: np.ndarray, boxes: np.ndarray | None = None) -> np.ndarray: ...


def check_inputs(images: Sequence[np.ndarray], landmarks: np.ndarray) -> np.ndarray:
    """``landmarks`` as float32 (N, 5, 2); InputError unless they match ``images`` (N HxWx3 uint8 RGB)."""
    lms = np.asarray(landmarks, dtype=np.float32)
    if lms.ndim != 3 or lms.shape[1:] != (5, 2) or len(lms) != len(images):
        raise InputError(f"landmarks must have shape ({len(images)}, 5, 2), got {tuple(lms.shape)}")
    for img in images:
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise InputError("embedders take HxWx3 uint8 RGB images")
    return lms
