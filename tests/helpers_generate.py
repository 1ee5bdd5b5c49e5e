"""Shared helpers for the generate tests: a tiny model on disk and a tiny recipe."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from synthface.config import GenerateRecipe, load_recipe

EMBED_DIM = 128
IMAGE_SIZE = 16


def make_tiny_model(path: Path, **kwargs: Any) -> Path:
    from synthface.testing import tiny_native_model

    kwargs.setdefault("embedding_dim", EMBED_DIM)
    kwargs.setdefault("image_size", IMAGE_SIZE)
    return tiny_native_model(path, **kwargs)


# 4 identities x 2 images, 2 shards, 2 steps, 16 px PNG, no filter (the --set form of tiny_recipe)
TINY_SETS = [
    "identities.count=4",
    "images_per_identity=2",
    "shard_identities=2",
    "sampling.scheduler=ddpm",
    "sampling.steps=2",
    "sampling.batch_size=3",
    "sampling.dtype=fp32",
    "filter.enabled=false",
    "output.image_format=png",
    f"output.image_size={IMAGE_SIZE}",
]


def tiny_recipe(model: Path | str, *sets: str) -> GenerateRecipe:
    """4 identities x 2 images, 2 shards, 2 steps, 16 px PNG, no filter."""
    base = [f"model={model}", *TINY_SETS]
    return load_recipe(GenerateRecipe, None, base + list(sets))


def read_rows(out: Path) -> list[dict[str, Any]]:
    """Every row of every shard, sorted by (identity, sample); NaN scores become None (comparable)."""
    rows = []
    for f in sorted((out / "data").glob("train-*.parquet")):
        rows.extend(pq.read_table(f).to_pylist())
    for row in rows:
        for key, value in row.items():
            if isinstance(value, float) and value != value:
                row[key] = None
    return sorted(rows, key=lambda r: (r["identity"], r["sample"]))


def decode(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)))
