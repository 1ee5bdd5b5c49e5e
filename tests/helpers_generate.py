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


CLASS_EMBEDDING_DIM = 16


def shared_direction_embeddings(n: int, seed: int = 0) -> np.ndarray:
    """``n`` unit embeddings (16-d) that share a direction, as real faces do (mean pairwise cosine ~0.8)."""
    e = np.random.default_rng(seed).standard_normal((n, CLASS_EMBEDDING_DIM)).astype(np.float32) + 2.0
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def class_embedding_model(**options: Any) -> Any:
    """A tiny in-memory native model (16 px) on the class-embedding path: centred condition, v-prediction with a
    zero-terminal-SNR schedule; ``options`` override build_native's."""
    from synthface.generator.native import default_scheduler_config
    from synthface.testing import tiny_native

    mean = shared_direction_embeddings(50, seed=9).mean(axis=0)
    sched = default_scheduler_config(False, "v_prediction", "squaredcos_cap_v2", True, "trailing")
    options = {"class_embedding": True, "condition_mean": mean, "scheduler_config": sched} | options
    return tiny_native(embedding_dim=CLASS_EMBEDDING_DIM, image_size=IMAGE_SIZE, **options)


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
