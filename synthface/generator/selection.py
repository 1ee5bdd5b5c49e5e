"""The generator's selectors for runs with filtering off, and the choice of selector for a run.

The select stage and its hooks are described in :mod:`synthface.selection`. With filtering off
the run uses :class:`KeepAll` (or :class:`AlignAll` for models without a known face template);
with it on, ``synthface.filtering``'s selector.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from synthface.selection import Candidate, Selected, Selector

if TYPE_CHECKING:
    from synthface.config import GenerateRecipe
    from synthface.generator.model import GeneratorModel
    from synthface.identities import IdentityPlan


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
    from synthface.filtering import make_selector as filter_selector

    return filter_selector(recipe, model, plan)
