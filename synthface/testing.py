"""Tiny random models for tests, benchmarks and smoke runs (no downloads, seconds on a CPU).

A smoke run of ``synthface generate`` needs a model; make one with::

    python -c "from synthface.testing import tiny_native_model; tiny_native_model('tiny')"
    synthface generate --model tiny --recipe recipes/quickstart-native.yaml --out runs/quickstart

Its images are noise-like (random weights): it proves the mechanics, not the quality.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from synthface.generator.native import NativeGenerator, build_native


def tiny_native(
    embedding_dim: int = 128,
    image_size: int = 32,
    embedder: str = "dlib",
    seed: int = 0,
    latent: bool = False,
    block_out_channels: Sequence[int] = (16, 32),
    **options: Any,
) -> NativeGenerator:
    """An in-memory tiny native model (~0.3M parameters; a tiny random VAE when ``latent``).

    ``options`` go to :func:`build_native` (class_embedding, condition_mean, scheduler_config).
    """
    vae = None
    if latent:
        from diffusers import AutoencoderKL

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            vae = AutoencoderKL(
                in_channels=3,
                out_channels=3,
                down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
                block_out_channels=(8, 16),
                layers_per_block=1,
                latent_channels=4,
                norm_num_groups=4,
                sample_size=image_size,
            ).eval()
    return build_native(
        embedder=embedder,
        embedding_dim=embedding_dim,
        image_size=image_size,
        block_out_channels=block_out_channels,
        id_tokens=4,
        token_dim=32,
        layers_per_block=1,
        attention_head_dim=8,
        norm_num_groups=8,
        vae=vae,
        seed=seed,
        **options,
    )


def tiny_native_model(
    path: str | Path,
    embedding_dim: int = 128,
    image_size: int = 32,
    embedder: str = "dlib",
    seed: int = 0,
    latent: bool = False,
) -> Path:
    """Write a tiny random native model (about 1 MB, seeded) to ``path`` and return the path."""
    return tiny_native(embedding_dim, image_size, embedder, seed, latent).save(path)


class TinyEmbedder(nn.Module):
    """A small random, differentiable face-embedder stand-in: images in [0, 1] -> unit vectors.

    Call it on a (B, 3, H, W) tensor (an identity guide for sampling), or use :meth:`embed_images`
    on HxWx3 uint8 arrays (the shape of the image-embedding callables identities.py takes).
    """

    def __init__(self, dim: int = 128, seed: int = 0, name: str = "tiny") -> None:
        super().__init__()
        self.name = name
        self.dim = dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = nn.Sequential(
                nn.Conv2d(3, 16, 3, stride=2, padding=1),
                nn.GELU(),
                nn.Conv2d(16, 32, 3, stride=2, padding=1),
                nn.GELU(),
                nn.AdaptiveAvgPool2d(4),
                nn.Flatten(),
                nn.Linear(32 * 16, dim),
            )
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.net(images * 2 - 1), dim=-1)

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
        with torch.no_grad():
            return torch.cat([self(x[i : i + 1]) for i in range(len(x))]).numpy().astype(np.float32)

    def embed(self, images: Sequence[np.ndarray], landmarks: np.ndarray, boxes: np.ndarray | None = None) -> np.ndarray:
        """The Embedder protocol (landmarks are ignored: the stand-in looks at the whole image)."""
        return self.embed_images(images)

    def differentiable(self) -> nn.Module:
        """The torch module identity guidance differentiates: images in [0, 1] -> embeddings."""
        return self


def register_tiny_embedder(name: str = "tiny", dim: int = 128, seed: int = 0) -> TinyEmbedder:
    """Register a :class:`TinyEmbedder` in the embedder registry under ``name`` (for tests)."""
    from synthface.faces.embedders import register_embedder

    embedder = TinyEmbedder(dim=dim, seed=seed, name=name)
    register_embedder(name, lambda device="auto", weights=None: embedder)
    return embedder
