"""Fast-path options of the sampler (``sampling.channels_last``, ``sampling.compile``, ``sampling.vae_tiling``).

Each is off by default and changes how the loaded model runs, never what it computes beyond
floating-point rounding (tests/test_fastpath.py renders the same images within 1e-4 on the CPU):

- ``channels_last``: the UNet (and the VAE) in channels-last memory format, which cuDNN's
  convolution kernels prefer on recent GPUs.
- ``compile``: ``torch.compile`` of the UNet in place (``nn.Module.compile``); the first batch pays
  the compilation (tens of seconds on a GPU, minutes on a CPU), later batches of the same shape
  reuse it. A GPU option: on the CPU the loop's batch-invariance hooks break the graph.
- ``vae_tiling``: decode in overlapping tiles (diffusers' ``AutoencoderKL.enable_tiling``), for
  large images on small memory; only for models whose VAE supports it.

bf16/fp16 autocast is ``sampling.dtype``; PyTorch's SDPA attention is diffusers' default processor.
"""

from __future__ import annotations

import torch

from synthface.errors import ConfigError
from synthface.generator.model import GeneratorModel


def apply_fast_path(
    model: GeneratorModel, *, channels_last: bool = False, compile: bool = False, vae_tiling: bool = False
) -> GeneratorModel:
    """Switch the options on for ``model`` (in place) and return it."""
    if vae_tiling:
        if model.vae is None or not hasattr(model.vae, "enable_tiling"):
            kind = "a pixel-space model" if model.vae is None else f"its {type(model.vae).__name__}"
            raise ConfigError(
                f"sampling.vae_tiling needs a VAE that decodes in tiles (AutoencoderKL); {model.source or model.family} is "
                f"{kind}: set sampling.vae_tiling=false"
            )
        model.vae.enable_tiling()
    if channels_last:
        model.unet.to(memory_format=torch.channels_last)
        if model.vae is not None:
            model.vae.to(memory_format=torch.channels_last)
    if compile:
        model.unet.compile()
    return model
