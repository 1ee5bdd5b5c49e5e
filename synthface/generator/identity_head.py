"""A noise-aware identity head: (noisy latent x_t, timestep) -> the clean face's embedding (L2-normalised).

A small conv net (a few residual blocks, the timestep added to every block as a scale and shift,
global average pooling, a linear map to the embedder's dimension) distilled from a training run's
cached latents and conditioning-embedder embeddings (:mod:`synthface.generator.training.head`).
It reads the sample in the space the UNet sees it (scaled latents, or pixels in [-1, 1] for pixel
models), so it serves both as a training loss on x0 estimates (timestep 0) and as the classifier
of classifier guidance at sampling (:func:`synthface.generator.guidance.head_gradient`), with no
decoder and no pixel-space embedder on the path.

On disk (``save_pretrained``): ``HEAD/config.json`` and ``HEAD/diffusion_pytorch_model.safetensors``,
plus ``HEAD/accuracy.json`` (its held-out cosine to the embedder per noise level). A model that
carries one keeps it in ``MODEL/identity_head/``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from torch.nn import functional as F

from synthface.errors import InputError, ModelMismatchError

if TYPE_CHECKING:
    from synthface.generator.model import GeneratorModel

HEAD_DIR = "identity_head"
ACCURACY_FILE = "accuracy.json"


def _groups(channels: int) -> int:
    return math.gcd(channels, 8)


class _Block(nn.Module):
    """GroupNorm-SiLU-conv, then the timestep's scale and shift, GroupNorm-SiLU-conv; a residual skip."""

    def __init__(self, c_in: int, c_out: int, t_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.film = nn.Linear(t_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(F.silu(temb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.conv2(F.silu(h)) + self.skip(x)


class IdentityHead(ModelMixin, ConfigMixin):
    """(B, C, H, W) noisy samples + (B,) timesteps -> (B, embedding_dim) unit embeddings.

    ``embedder``, ``latent_scale`` (the latent scaling factor it was trained under; 1 for pixel
    models) and ``num_train_timesteps`` say which model space it reads: :func:`check_head` compares
    them with a generator before it is used.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 32,
        sample_size: int = 16,
        embedding_dim: int = 128,
        width: int = 64,
        levels: int = 3,
        num_train_timesteps: int = 1000,
        embedder: str = "sface",
        latent_scale: float = 1.0,
    ) -> None:
        super().__init__()
        chans = [width * 2 ** min(i, 2) for i in range(levels)]
        t_dim = 4 * width
        self.time_mlp = nn.Sequential(nn.Linear(width, t_dim), nn.SiLU(), nn.Linear(t_dim, t_dim))
        self.stem = nn.Conv2d(in_channels, chans[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        self.downs = nn.ModuleList()
        c_in = chans[0]
        for i, c in enumerate(chans):
            self.blocks.append(_Block(c_in, c, t_dim))
            self.downs.append(nn.Conv2d(c, c, 3, stride=2, padding=1) if i < levels - 1 else nn.Identity())
            c_in = c
        self.out = nn.Sequential(
            nn.GroupNorm(_groups(c_in), c_in), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, embedding_dim)
        )

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        steps = torch.as_tensor(timesteps, device=x.device).reshape(-1).expand(x.shape[0])
        temb = self.time_mlp(get_timestep_embedding(steps, self.config.width, flip_sin_to_cos=True, downscale_freq_shift=0))
        h = self.stem(x.to(self.stem.weight.dtype))
        for block, down in zip(self.blocks, self.downs):
            h = down(block(h, temb.to(h.dtype)))
        return F.normalize(self.out(h).float(), dim=-1)


def load_identity_head(path: str | Path, device: torch.device | str = "cpu") -> IdentityHead:
    """A frozen head (eval mode, no parameter gradients) from its folder; a bad folder is an InputError."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise InputError(
            f"no identity head in {path}: train one with `synthface train-head` (same --data, --recipe and --out as the run)"
        )
    try:
        head = IdentityHead.from_pretrained(path)
    except (OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot load the identity head {path}: {first}; train it again with `synthface train-head`") from None
    return head.to(torch.device(device)).eval().requires_grad_(False)


def latent_scale_of(model: GeneratorModel) -> float:
    """The scale of the space the model's UNet works in: the VAE's scaling factor, 1 for pixel models."""
    return float(getattr(model.vae.config, "scaling_factor", 1.0)) if model.vae is not None else 1.0


def check_head(head: IdentityHead, model: GeneratorModel, where: str) -> None:
    """Refuse a head trained for another model space (embedder, latent shape or scale, schedule length)."""
    cfg: Any = head.config
    problems = []
    if cfg.embedder != model.embedder or int(cfg.embedding_dim) != int(model.embedding_dim):
        problems.append(f"it predicts {cfg.embedding_dim}-d {cfg.embedder} embeddings, the model is conditioned on "
                        f"{model.embedding_dim}-d {model.embedder} ones")  # fmt: skip
    channels, size, _ = model.latent_shape
    if (int(cfg.in_channels), int(cfg.sample_size)) != (channels, size):
        problems.append(f"it reads {cfg.in_channels}x{cfg.sample_size}x{cfg.sample_size}, the model {channels}x{size}x{size}")
    scale = latent_scale_of(model)
    if not math.isclose(float(cfg.latent_scale), scale, rel_tol=1e-4):
        problems.append(f"it was trained on latents scaled by {cfg.latent_scale:.6g}, the model scales them by {scale:.6g}")
    steps = int(model.scheduler_config.get("num_train_timesteps", 1000))
    if int(cfg.num_train_timesteps) != steps:
        problems.append(f"it knows {cfg.num_train_timesteps} timesteps, the model's schedule {steps}")
    if problems:
        raise ModelMismatchError(
            f"the identity head {where} does not fit this model ({'; '.join(problems)}): train it for this run with "
            "`synthface train-head`"
        )


def identity_head_for(model: GeneratorModel, device: torch.device | str, path: str | Path | None = None) -> IdentityHead:
    """The model's own head (``MODEL/identity_head``, or ``path``), loaded, checked and frozen on ``device``."""
    where = Path(path) if path is not None else (Path(model.source) / HEAD_DIR if model.source else None)
    if where is None:
        raise InputError("sampling.identity_guide=head needs a model loaded from a folder holding identity_head/")
    head = load_identity_head(where, device)
    check_head(head, model, str(where))
    return head
