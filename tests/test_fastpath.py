"""Fast-path options of the sampler: each renders the images of the plain path (within rounding), or says why it cannot apply."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthface.errors import ConfigError
from synthface.generator import sample_batch
from synthface.generator.fastpath import apply_fast_path
from synthface.testing import tiny_native


def _embeddings(n: int, dim: int = 32) -> np.ndarray:
    e = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def _render(model) -> torch.Tensor:
    return sample_batch(model, _embeddings(3), [5, 6, 7], scheduler="ddim", steps=3, guidance_scale=2.0)


def test_channels_last_renders_the_same_images():
    plain = _render(tiny_native(embedding_dim=32, image_size=16, latent=True))
    model = apply_fast_path(tiny_native(embedding_dim=32, image_size=16, latent=True), channels_last=True)
    conv = next(m for m in model.unet.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(_render(model), plain, atol=1e-4)


def test_vae_tiling_decodes_the_same_small_images_and_refuses_pixel_models():
    plain = _render(tiny_native(embedding_dim=32, image_size=16, latent=True))
    model = apply_fast_path(tiny_native(embedding_dim=32, image_size=16, latent=True), vae_tiling=True)
    assert model.vae.use_tiling
    assert torch.allclose(_render(model), plain, atol=1e-4)  # below the tile size nothing is tiled
    with pytest.raises(ConfigError, match="sampling.vae_tiling=false"):
        apply_fast_path(tiny_native(embedding_dim=32, image_size=16), vae_tiling=True)


@pytest.mark.slow
def test_compiled_unet_renders_the_same_images():
    plain = _render(tiny_native(embedding_dim=32, image_size=16))
    model = apply_fast_path(tiny_native(embedding_dim=32, image_size=16), compile=True)
    assert model.unet._compiled_call_impl is not None
    assert torch.allclose(_render(model), plain, atol=1e-4)
