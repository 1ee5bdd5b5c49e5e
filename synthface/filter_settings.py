"""The filter's settings, resolved from a generate recipe: what the per-identity stage
(:mod:`synthface.filtering`) and the final pass (:mod:`synthface.filtering_final`) both read."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from synthface.errors import ConfigError
from synthface.faces.embedders import default_threshold


@dataclass
class FilterSettings:
    embedder: str
    threshold: float
    detector_threshold: float
    oversample: float
    min_images: int
    images_per_identity: int
    anchor: str  # identity | centre
    merge_threshold: float
    leakage: float
    gallery: str | None
    image_size: int
    batch_size: int = 64

    @classmethod
    def from_recipe(cls, recipe: Any, conditioning_embedder: str | None) -> "FilterSettings":
        f = recipe.filter
        threshold = f.threshold if f.threshold is not None else default_threshold(f.embedder)
        same = conditioning_embedder is not None and f.embedder == conditioning_embedder
        anchor = f.anchor if f.anchor != "auto" else ("identity" if same else "centre")
        if anchor == "identity" and not same:
            raise ConfigError(
                f"filter.anchor=identity needs the filter embedder to be the conditioning embedder "
                f"('{conditioning_embedder}', not '{f.embedder}'): set filter.anchor=centre or "
                f"filter.embedder={conditioning_embedder}"
            )
        if f.leakage is not None:
            leakage = f.leakage
        else:
            leakage = recipe.identities.leakage if same else threshold
        m = recipe.images_per_identity
        return cls(
            embedder=f.embedder,
            threshold=float(threshold),
            detector_threshold=float(f.detector_threshold),
            oversample=float(f.oversample),
            min_images=min(int(f.min_images), m),
            images_per_identity=m,
            anchor=anchor,
            merge_threshold=float(f.merge_threshold if f.merge_threshold is not None else threshold),
            leakage=float(leakage),
            gallery=f.gallery or recipe.identities.gallery,
            image_size=int(recipe.output.image_size),
            batch_size=int(f.batch_size),
        )

    def candidates(self, images_per_identity: int) -> int:
        return int(math.ceil(round(self.oversample * images_per_identity, 9)))

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)
