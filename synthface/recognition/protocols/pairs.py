"""A verification benchmark in memory (:class:`PairsProtocol`) and the fold rule every reader shares."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthface.errors import InputError


@dataclass
class PairsProtocol:
    """A verification benchmark: images, the pairs among them, labels and folds.

    ``images`` holds file paths (LFW ``pairs.txt``) or encoded image bytes (insightface
    ``.bin``); ``pairs`` is (P, 2) int64 indices into ``images``; ``issame`` (P,) bool;
    ``folds`` (P,) int64 fold index of each pair.
    """

    name: str
    images: list[Path] | list[bytes]
    pairs: np.ndarray
    issame: np.ndarray
    folds: np.ndarray
    source: Path | None = None

    def __len__(self) -> int:
        return int(len(self.pairs))

    @property
    def n_pairs(self) -> int:
        return len(self)

    @property
    def n_folds(self) -> int:
        return int(len(np.unique(self.folds)))

    @property
    def same_pairs(self) -> int:
        return int(self.issame.sum())

    @property
    def paths(self) -> list[Path]:
        """The image paths of a file-backed protocol."""
        if self.images and not isinstance(self.images[0], Path):
            raise InputError(f"benchmark '{self.name}' stores encoded images, not files: use load_image(i)")
        return list(self.images)  # type: ignore[arg-type]

    def load_image(self, index: int) -> np.ndarray:
        """Decode image ``index`` to an HxWx3 uint8 RGB array (InputError when unreadable)."""
        item = self.images[index]
        return decode_image(item, what=str(item) if isinstance(item, Path) else f"image {index} of {self.name}")


def decode_image(data: Path | bytes, what: str = "image") -> np.ndarray:
    """Decode a file or encoded bytes (JPEG/PNG/...) to an HxWx3 uint8 RGB array through the bounded
    loader (:func:`synthface.faces.align.load_image`: a pixel cap, JPEG draft downscaling)."""
    from synthface.faces.align import load_image

    try:
        return load_image(data)
    except InputError as exc:
        raise InputError(f"cannot decode {what}: {exc}; check the file is a valid JPEG/PNG image") from None


def split_folds(n_pairs: int, n_folds: int = 10, issame: np.ndarray | None = None) -> np.ndarray:
    """Fold index of each pair for k contiguous folds (scikit-learn ``KFold`` without shuffling).

    Like ``KFold``, the first ``n_pairs % n_folds`` folds hold one pair more. With
    ``issame`` given, the same pairs and the different pairs are each split into k
    contiguous runs, so every fold keeps the class balance even when a list has all
    its same pairs first (for LFW's ordering the result equals its official folds).
    """
    if n_folds < 2:
        raise InputError(f"need at least 2 folds for cross-validated accuracy, got {n_folds}")
    if n_pairs < n_folds:
        raise InputError(f"{n_pairs} pairs cannot be split into {n_folds} folds: use fewer folds or more pairs")
    if issame is None:
        sizes = np.full(n_folds, n_pairs // n_folds, dtype=np.int64)
        sizes[: n_pairs % n_folds] += 1
        return np.repeat(np.arange(n_folds, dtype=np.int64), sizes)
    issame = np.asarray(issame, dtype=bool)
    if issame.shape != (n_pairs,):
        raise InputError(f"issame has {issame.size} labels for {n_pairs} pairs")
    folds = np.empty(n_pairs, dtype=np.int64)
    for label in (True, False):
        where = np.flatnonzero(issame == label)
        folds[where] = split_folds(len(where), n_folds) if len(where) >= n_folds else np.arange(len(where))
    if len(np.unique(folds)) < n_folds:
        raise InputError(f"{n_pairs} pairs leave some of the {n_folds} folds empty: use fewer folds or more pairs")
    return folds
