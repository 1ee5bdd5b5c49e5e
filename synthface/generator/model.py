"""What a generator family is: :class:`GeneratorModel`, the model the sampling loop
(:mod:`synthface.generator.pipeline`) runs, and that guidance, the identity head and every family build on."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch


class GeneratorModel(ABC):
    """What a generator family supplies to :func:`sample_batch`.

    Attributes every family sets: ``family`` (registry name), ``unet`` (a diffusers
    ``UNet2DConditionModel``), ``vae`` (``AutoencoderKL`` or None for pixel-space models),
    ``scheduler_config`` (dict of the scheduler it was trained with), ``embedder`` (registry name of
    the conditioning face embedder), ``embedding_dim``, ``image_size`` (decoded side in pixels) and
    ``template_scale`` (the five ArcFace points scaled by this around the image centre give the
    landmarks of a generated face; None when unknown, so a detector must find them).
    """

    family: str
    unet: Any
    vae: Any = None
    scheduler_config: dict[str, Any]
    embedder: str
    embedding_dim: int
    image_size: int
    template_scale: float | None = None
    source: str = ""

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        cfg = self.unet.config
        size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
        return (int(cfg.in_channels), int(size), int(size))

    @abstractmethod
    def condition(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, D) identity embeddings -> (B, T, C) encoder_hidden_states of the conditional branch."""

    @abstractmethod
    def uncondition(self, batch: int) -> torch.Tensor:
        """(B, T, C) encoder_hidden_states of the unconditional branch."""

    def class_labels(self, embeddings: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        """(B, E) ``class_labels`` for UNets that add the identity to the time embedding, else None.

        ``embeddings`` None asks for the unconditional branch's.
        """
        return None

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [-1, 1] (identity for pixel-space models); differentiable."""
        if self.vae is None:
            return latents
        scale = float(getattr(self.vae.config, "scaling_factor", 1.0))
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return self.vae.decode(latents / scale + shift).sample

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> latents (the mode of the VAE's posterior; identity for pixel-space models)."""
        if self.vae is None:
            return images
        scale = float(getattr(self.vae.config, "scaling_factor", 1.0))
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return (self.vae.encode(images).latent_dist.mode() - shift) * scale
