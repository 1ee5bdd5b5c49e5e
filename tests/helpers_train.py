"""Shared helper for the generator-training tests: the recipe keys every tiny training run uses."""

from __future__ import annotations

from pathlib import Path


def tiny_train_sets(embedder: str, cache: Path) -> list[str]:
    """``--set`` lines of a tiny (about 0.3M parameters) 16 px tight-crop generator run on the CPU, one
    thread, its caches in ``cache``; each test adds what its run is about (batch, steps, objective)."""
    return [
        f"embedder={embedder}",
        "model.image_size=16",
        "model.crop=tight",
        "model.block_out_channels=[16,32]",
        "model.layers_per_block=1",
        "model.norm_num_groups=8",
        "model.token_dim=32",
        "train.warmup_steps=1",
        "train.sample_steps=2",
        "train.sample_identities=2",
        "train.sample_seeds=2",
        "train.device=cpu",
        "train.threads=1",
        f"data.cache={cache}",
        "data.workers=0",
    ]
