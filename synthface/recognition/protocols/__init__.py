"""Verification benchmarks: which image pairs to compare, their labels and folds.

Four sources, one :class:`PairsProtocol`: an insightface ``.bin`` file (:mod:`.binfile`), a
``path_a,path_b,same`` CSV or a folder of people (:mod:`.folders`), an LFW-style ``pairs.txt``
(:mod:`.lfw_pairs`). :func:`load_protocol` picks the reader from the path.
"""

from __future__ import annotations

from pathlib import Path

from synthface.errors import InputError
from synthface.recognition.protocols.binfile import load_bin
from synthface.recognition.protocols.folders import folder_protocol, read_csv_pairs
from synthface.recognition.protocols.lfw_pairs import read_pairs
from synthface.recognition.protocols.pairs import PairsProtocol, decode_image, split_folds

__all__ = ["PairsProtocol", "decode_image", "load_protocol", "read_pairs", "split_folds"]


def load_protocol(
    path: str | Path, images_dir: str | Path | None = None, n_folds: int = 10, seed: int = 0, pairs_per_fold: int | None = None
) -> PairsProtocol:
    """Load an insightface ``.bin`` file, a ``path_a,path_b,same`` CSV, a folder of people (a seeded
    people-disjoint protocol is drawn: synthface.recognition.protocols.folders) or an LFW-style pairs file
    (which needs ``images_dir``)."""
    path = Path(path)
    if path.suffix.lower() == ".bin":
        return load_bin(path, n_folds=n_folds)
    if path.suffix.lower() == ".csv":
        return read_csv_pairs(path, images_dir, n_folds=n_folds)
    if path.is_dir():
        return folder_protocol(path, n_folds=n_folds, pairs_per_fold=pairs_per_fold, seed=seed)
    if images_dir is None:
        raise InputError(f"{path} is a pairs list: also pass the folder of images it names")
    return read_pairs(path, images_dir, n_folds=n_folds)
