"""What the generator learns: the denoiser module, its target and loss weights, and one step's seeded draws.

Every random draw of a step (augmentation, noise, timesteps, condition dropout) comes from a CPU
generator seeded with (seed, step, micro-batch, process) (:func:`step_generator`), so a resumed run
draws exactly what the uninterrupted run would have drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from synthface.errors import ConfigError


class Denoiser(nn.Module):
    """Projector + UNet as one trainable module: (noisy, t, prepared embeddings, drop_mask) -> prediction.

    Dropped rows get the projector's null tokens and, when the UNet has a class embedding, the
    unconditional class input (zeros: the training mean once centred), as the sampler's uncond branch.
    """

    def __init__(self, unet: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        self.unet = unet
        self.projector = projector

    def forward(
        self, noisy: torch.Tensor, timesteps: torch.Tensor, embeddings: torch.Tensor, drop_mask: torch.Tensor
    ) -> torch.Tensor:
        from synthface.generator.native import uses_class_embedding

        hidden = self.projector(embeddings, drop_mask)
        labels = None
        if uses_class_embedding(self.unet):
            keep = (~drop_mask.to(embeddings.device, torch.bool)).view(-1, 1)
            labels = embeddings * keep.to(embeddings.dtype)
        return self.unet(noisy, timesteps, encoder_hidden_states=hidden, class_labels=labels, return_dict=False)[0]


def loss_weights(scheduler: Any, timesteps: torch.Tensor, gamma: float | None) -> torch.Tensor | None:
    """Min-SNR-gamma weights per sample (None: plain MSE), for the scheduler's prediction type.

    epsilon: min(SNR, g) / SNR; v_prediction: min(SNR, g) / (SNR + 1) (the same weighting of x0 error).
    """
    if gamma is None:
        return None
    a = scheduler.alphas_cumprod.to(torch.float64)[timesteps]
    snr = a / (1.0 - a).clamp_min(1e-12)
    clipped = snr.clamp(max=gamma)
    if scheduler.config.prediction_type == "v_prediction":
        return (clipped / (snr + 1.0)).float()
    return (clipped / snr.clamp_min(1e-12)).float()


def training_target(scheduler: Any, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet learns to predict: the noise, or the velocity sqrt(a) noise - sqrt(1 - a) x0."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, timesteps)
    raise ConfigError(f"unsupported prediction_type '{kind}' for training: use epsilon or v_prediction")


@dataclass
class Batch:
    x0: torch.Tensor  # (B, C, H, W) clean images in [-1, 1] or latents
    cond: torch.Tensor  # (B, D) conditioning embeddings, as the model sees them (centred when it centres)
    target: torch.Tensor  # (B, D) the same embeddings uncentred: what the identity term pulls towards


def step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    """The CPU generator of one micro-batch: depends on (seed, step, micro, rank) only."""
    mixed = (seed * 0x9E3779B1 + step * 1_000_003 + micro * 7_919 + rank * 104_729) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)


def drop_mask(batch: int, rate: float, gen: torch.Generator) -> torch.Tensor:
    """Which rows lose their identity (the projector's null tokens stand in): Bernoulli(rate)."""
    return torch.rand(batch, generator=gen) < rate


def color_jitter(x: torch.Tensor, amount: float, gen: torch.Generator) -> torch.Tensor:
    """Small per-image brightness, contrast and saturation changes of images in [0, 1] (identity-preserving)."""
    b = x.shape[0]
    shape = (b, 1, 1, 1)

    def factor() -> torch.Tensor:
        return 1.0 + (torch.rand(shape, generator=gen) * 2 - 1) * amount

    x = x * factor()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * factor() + mean
    gray = 0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    x = (x - gray) * factor() + gray
    return x.clamp(0.0, 1.0)


def augment_pixels(images: torch.Tensor, augment: Sequence[str], jitter: float, gen: torch.Generator) -> torch.Tensor:
    """uint8 (B, H, W, 3) crops -> float (B, 3, H, W) in [-1, 1] with flips and colour jitter."""
    x = images.permute(0, 3, 1, 2).float().div(255.0)
    flips = torch.rand(x.shape[0], generator=gen) < 0.5
    if "flip" in augment:
        x = torch.where(flips.view(-1, 1, 1, 1), x.flip(-1), x)
    if "color_jitter" in augment and jitter > 0:
        x = color_jitter(x, jitter, gen)
    return x * 2.0 - 1.0
