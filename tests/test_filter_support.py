"""Support for the filter/export/inspect tests: a deterministic pixel-projection embedder and a filtered tiny run.

(No tests here; the module name keeps it beside the filter tests.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from helpers_generate import make_tiny_model, tiny_recipe

PROJ = "test-proj"
PROJ_DIM = 64


class ProjEmbedder:
    """A fixed random projection of the 16x16 resized pixels, L2-normalised (needs no weights)."""

    name = PROJ
    dim = PROJ_DIM

    def __init__(self) -> None:
        self.w = np.random.default_rng(1234).standard_normal((16 * 16 * 3, PROJ_DIM)).astype(np.float64)

    def embed(self, images: Sequence[np.ndarray], landmarks: np.ndarray, boxes: np.ndarray | None = None) -> np.ndarray:
        from PIL import Image

        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        x = np.stack([np.asarray(Image.fromarray(i).resize((16, 16), Image.Resampling.BILINEAR), np.float64).reshape(-1) / 255.0 - 0.5
                      for i in images])  # fmt: skip
        y = x @ self.w
        return (y / np.linalg.norm(y, axis=1, keepdims=True)).astype(np.float32)


def register_proj() -> ProjEmbedder:
    from synthface.faces.embedders import register_embedder

    emb = ProjEmbedder()
    register_embedder(PROJ, lambda device="auto", weights=None: emb)
    return emb


def filtered_recipe(model: Path, *sets: str) -> Any:
    """6 identities x 2 images, 3 shards, 4 candidates each, filtered by the projection embedder."""
    return tiny_recipe(
        model,
        "identities.count=6",
        "filter.enabled=true",
        f"filter.embedder={PROJ}",
        "filter.detector_threshold=0",
        "filter.oversample=2",
        "filter.min_images=2",
        "filter.threshold=0.1",
        "filter.merge_threshold=0.6",
        *sets,
    )


def make_filtered_dataset(root: Path, *sets: str) -> Path:
    from synthface.generator.run import generate_dataset

    register_proj()
    model = root / "model"
    if not model.exists():
        make_tiny_model(model)
    out = root / "out"
    generate_dataset(filtered_recipe(model, *sets), out)
    return out
