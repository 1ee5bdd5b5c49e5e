"""The select stage of a ``generate`` run: which rendered samples of an identity go into the dataset.

A :class:`Selector` gets every :class:`Candidate` of one identity at once and returns the
:class:`Selected` ones (an empty list drops the identity). Its hooks, each with a default that does
nothing beyond keeping every sample as generated:

* ``candidates_per_identity(M)``: how many samples to render per identity (oversampling);
* ``select(identity, candidates)``: the kept samples, with the image to store and its scores;
* ``shard_extra(out, shard)``: called before a shard is written; what it returns is noted in the
  shard's commit marker (filtering writes its per-shard record here);
* ``finalize(out, plan, shards, config_hash)``: the final pass over every committed shard, returning
  a report for identities.parquet and summary.json, or None.

The generator's own selectors (filtering off) are in :mod:`synthface.generator.selection`;
filtering's is :class:`synthface.filtering.FilterSelector`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    from synthface.dataset.plan import Shard
    from synthface.identities import IdentityPlan


@dataclass
class Candidate:
    """One rendered sample."""

    identity: int
    sample: int
    seed: int
    image: np.ndarray  # HxWx3 uint8, as generated
    variation: tuple[float, float, int] | None = None  # (cosine, guidance, style) drawn for it, when drawn


@dataclass
class Selected:
    """A sample kept for the dataset, with the image to store and its scores (NaN: not measured)."""

    candidate: Candidate
    image: np.ndarray
    id_score: float = float("nan")
    det_score: float = float("nan")


class Selector:
    """Chooses which rendered samples of one identity go into the dataset (see the module docstring).

    Every hook has a default: render ``images_per_identity`` samples, keep them all as generated,
    note nothing in the markers, no final pass.
    """

    def candidates_per_identity(self, images_per_identity: int) -> int:
        return images_per_identity

    def select(self, identity: int, candidates: list[Candidate]) -> list[Selected]:
        return [Selected(c, c.image) for c in candidates]

    def shard_extra(self, out: Path, shard: Shard) -> dict[str, Any] | None:
        return None

    def finalize(self, out: Path, plan: IdentityPlan, shards: Sequence[Shard], config_hash: str) -> Any:
        return None
