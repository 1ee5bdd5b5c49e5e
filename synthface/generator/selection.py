"""The selection stage of a ``generate`` run: which rendered samples of an identity go into the dataset.

A :class:`Selector` gets every :class:`Candidate` of one identity at once and returns the
:class:`Selected` ones (an empty list drops the identity). Its hooks, each with a default that does
nothing beyond keeping every sample as generated:

* ``candidates_per_identity(M)``: how many samples to render per identity (oversampling);
* ``select(identity, candidates)``: the kept samples, with the image to store and its scores;
* ``shard_extra(out, shard)``: called before a shard is written; what it returns is noted in the
  shard's commit marker (filtering writes its per-shard record here);
* ``finalize(out, plan, shards, config_hash)``: the final pass over every committed shard, returning
  a report for identities.parquet and summary.json, or None.

With filtering off the run uses :class:`KeepAll` (or :class:`AlignAll` for models without a known
face template); with it on, ``synthface.filtering``'s selector.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from synthface.errors import ConfigError

if TYPE_CHECKING:
    from synthface.config import GenerateRecipe
    from synthface.dataset.plan import Shard
    from synthface.generator.pipeline import GeneratorModel
    from synthface.identities import IdentityPlan


@dataclass
class Candidate:
    """One rendered sample."""

    identity: int
    sample: int
    seed: int
    image: np.ndarray  # HxWx3 uint8, as generated


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


class KeepAll(Selector):
    """Selection with filtering off: every sample, as generated, resized to ``output.image_size``."""

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size

    def select(self, identity: int, candidates: list[Candidate]) -> list[Selected]:
        return [Selected(c, resize(c.image, self.image_size)) for c in candidates]


class AlignAll(Selector):
    """Selection with filtering off for models whose faces sit anywhere (``template_scale`` None, e.g. Arc2Face).

    Every sample is kept: its face is detected (MTCNN) and warped to the ``output.image_size``
    ArcFace template, with the detector's score as ``det_score``; an image where no face is found
    is kept resized whole, with ``det_score`` 0.
    """

    def __init__(self, image_size: int, device: str = "auto") -> None:
        self.image_size = image_size
        self.device = device
        self._detector: Any = None

    def select(self, identity: int, candidates: list[Candidate]) -> list[Selected]:
        from synthface.faces.align import FaceDetector, warp_face

        if self._detector is None:
            self._detector = FaceDetector(device=self.device)
        faces = self._detector.detect([c.image for c in candidates])
        out = []
        for c, face in zip(candidates, faces):
            if face is None:
                out.append(Selected(c, resize(c.image, self.image_size), det_score=0.0))
            else:
                out.append(Selected(c, warp_face(c.image, face.landmarks, size=self.image_size), det_score=face.score))
        return out


def resize(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] == size and image.shape[1] == size:
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC), np.uint8)


def make_selector(recipe: GenerateRecipe, model: GeneratorModel, plan: IdentityPlan | None = None) -> Selector:
    """With ``filter.enabled`` false: KeepAll, or AlignAll for models without a known face template;
    else ``synthface.filtering.make_selector(recipe, model, plan)``."""
    if not recipe.filter.enabled:
        if model.template_scale is None:
            return AlignAll(recipe.output.image_size, device=str(model.device))
        return KeepAll(recipe.output.image_size)
    try:
        from synthface import filtering  # type: ignore[attr-defined]
    except ImportError as exc:
        if getattr(exc, "name", None) not in ("synthface.filtering", None):
            raise
        raise ConfigError(
            "filter.enabled=true needs the filtering stage (synthface.filtering), which this installation "
            "lacks: set filter.enabled=false"
        ) from None
    return filtering.make_selector(recipe, model, plan)  # type: ignore[no-any-return]
