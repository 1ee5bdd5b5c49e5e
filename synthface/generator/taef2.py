"""TAEF2: a tiny pretrained image autoencoder (1.34M parameters per half, MIT) as a native latent space.

TAEF2 (``madebyollin/taesd``: ``taef2_encoder.pth`` / ``taef2_decoder.pth``) approximates FLUX.2's
latent space with small conv stacks: RGB in [0, 1] -> 32 latent channels at 1/8 the resolution
(128x128 -> 32x16x16) and back. :class:`TinyAutoencoder` wraps both halves behind the part of
diffusers' ``AutoencoderKL`` surface synthface uses (``config.latent_channels``,
``config.scaling_factor``, ``config.shift_factor``, ``dtype``, ``encode(x).latent_dist.mean``,
``decode(z).sample``, images in [-1, 1]) and saves / loads with ``save_pretrained`` /
``from_pretrained`` (safetensors) like any diffusers model. Build one from the two original files
with :func:`load_taef2`.

Measured on 50 LFW deep-funneled images (centre 128x128 crops, float32, batch 16, one CPU thread
on a busy 2-core machine): encode about 250 ms and decode about 270 ms per image (~7.5 and ~8.5
GFLOP: full-resolution 64-channel convs); round-trip PSNR 34.6 dB mean (min 31.9, uint8); raw
latents have overall mean -0.01 and std 0.91, per-channel means -1.09 .. 0.95 and per-channel stds
0.52 .. 1.12 (rms 0.82), |z| <= 6.4. ``scaling_factor`` about 1 / 0.91 = 1.1 gives unit variance.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from synthface.fingerprint import file_sha256
from synthface.errors import InputError, WeightsError

ENCODER_FILE = "taef2_encoder.pth"
DECODER_FILE = "taef2_decoder.pth"
SOURCE = "the public repository madebyollin/taesd on GitHub / the Hugging Face Hub"
# sha256 of the published files (madebyollin/taesd at commit 5cccb12), checked when the names match
KNOWN_SHA256 = {
    ENCODER_FILE: "10a4e1021e89d7551eaf161352da8dbd0b1aa83872ae28b150c1df1ce2f147b6",
    DECODER_FILE: "0a44a31e1ae59eb9dbf9359d24942fd3ef5928162c1800d97a28c61d51be0ab5",
}
_ENCODER_LAST = 14  # index of the encoder's last conv (width -> latent channels)
DOWNSCALE_FACTOR = 8  # three stride-2 convs in the encoder, three 2x upsamplings in the decoder


def _conv(n_in: int, n_out: int, **kwargs: Any) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class SoftClamp(nn.Module):
    """tanh(x / 3) * 3: keeps decoder inputs in (-3, 3) without killing the gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class TAEBlock(nn.Module):
    """conv-ReLU-conv-ReLU-conv + skip, ReLU of the sum; ``pool`` adds a 1x1 bottleneck branch
    (conv 1x1 to 4x width, GroupNorm(4), ReLU, conv 1x1 back) to the block input first."""

    def __init__(self, n_in: int, n_out: int, pool: bool = False) -> None:
        super().__init__()
        self.conv = nn.Sequential(_conv(n_in, n_out), nn.ReLU(), _conv(n_out, n_out), nn.ReLU(), _conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()
        self.pool: nn.Module | None = None
        if pool:
            hidden = 4 * n_in
            self.pool = nn.Sequential(
                nn.Conv2d(n_in, hidden, 1, bias=False), nn.GroupNorm(4, hidden), nn.ReLU(), nn.Conv2d(hidden, n_in, 1, bias=False)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + self.skip(x))


def taef2_encoder(latent_channels: int = 32, width: int = 64, pool: bool = True) -> nn.Sequential:
    """RGB [0, 1] (B, 3, H, W) -> raw latents (B, latent_channels, H/8, W/8); state-dict keys as published."""
    layers: list[nn.Module] = [_conv(3, width), TAEBlock(width, width)]
    for stage in range(3):
        last = stage == 2
        layers += [_conv(width, width, stride=2, bias=False)] + [TAEBlock(width, width, pool and last) for _ in range(3)]
    layers.append(_conv(width, latent_channels))
    return nn.Sequential(*layers)


def taef2_decoder(latent_channels: int = 32, width: int = 64, pool: bool = True) -> nn.Sequential:
    """Raw latents -> RGB approximately in [0, 1] (not clamped); state-dict keys as published."""
    layers: list[nn.Module] = [SoftClamp(), _conv(latent_channels, width), nn.ReLU()]
    for stage in range(3):
        first = stage == 0
        layers += [TAEBlock(width, width, pool and first) for _ in range(3)]
        layers += [nn.Upsample(scale_factor=2), _conv(width, width, bias=False)]
    layers += [TAEBlock(width, width), _conv(width, 3)]
    return nn.Sequential(*layers)


class PointLatent:
    """A deterministic ``latent_dist``: ``mean``, ``mode()`` and ``sample()`` are the same tensor."""

    def __init__(self, mean: torch.Tensor) -> None:
        self.mean = mean

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.mean

    def mode(self) -> torch.Tensor:
        return self.mean


class TinyAutoencoder(ModelMixin, ConfigMixin):
    """TAEF2 with ``AutoencoderKL``'s interface: images in [-1, 1] <-> raw latents (8x smaller, 32 channels).

    ``scaling_factor`` / ``shift_factor`` are recorded for the callers (synthface trains on
    ``(mean - shift) * scale`` and decodes ``z / scale + shift``, as for AutoencoderKL); ``encode``
    and ``decode`` themselves work on raw latents. ``decode`` does not clamp, so gradients reach the
    latents everywhere (the sampler clamps the final images). ``width`` / ``pool`` exist for tiny
    random test models; the published weights are width 64 with pool branches.
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 32,
        width: int = 64,
        pool: bool = True,
        scaling_factor: float = 1.0,
        shift_factor: float = 0.0,
    ) -> None:
        super().__init__()
        self.encoder = taef2_encoder(latent_channels, width, pool)
        self.decoder = taef2_decoder(latent_channels, width, pool)

    @property
    def downscale_factor(self) -> int:
        return DOWNSCALE_FACTOR

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple[PointLatent]:
        """Images (B, 3, H, W) in [-1, 1], H and W multiples of 8 -> ``.latent_dist.mean`` (B, C, H/8, W/8)."""
        if x.shape[-1] % DOWNSCALE_FACTOR or x.shape[-2] % DOWNSCALE_FACTOR:
            raise InputError(
                f"TAEF2 encodes images whose sides are multiples of 8, got {tuple(x.shape[-2:])}: resize or crop them"
            )
        dist = PointLatent(self.encoder(x.add(1).div(2)))
        return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, **_: Any) -> DecoderOutput | tuple[torch.Tensor]:
        """Raw latents -> ``.sample`` images, about [-1, 1] (not clamped; differentiable)."""
        image = self.decoder(z).mul(2).sub(1)
        return DecoderOutput(sample=image) if return_dict else (image,)

    def forward(self, sample: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple[torch.Tensor]:
        return self.decode(self.encode(sample, return_dict=False)[0].mean, return_dict=return_dict)


def vae_downscale_factor(vae: Any) -> int:
    """Pixels per latent along a side: TinyAutoencoder's 8, or AutoencoderKL's 2^(levels - 1)."""
    factor = getattr(vae, "downscale_factor", None)
    if factor is not None:
        return int(factor)
    blocks = getattr(vae.config, "block_out_channels", None)
    if blocks is None:
        raise InputError(f"cannot tell the downscale factor of the VAE {type(vae).__name__}: use an AutoencoderKL or TAEF2")
    return 2 ** (len(blocks) - 1)


def vae_class(folder: str | Path) -> type[ModelMixin]:
    """The class that wrote ``folder`` with ``save_pretrained`` (its config.json's ``_class_name``)."""
    from diffusers import AutoencoderKL

    try:
        name = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError):
        name = None  # from_pretrained reports what is wrong with the folder
    return TinyAutoencoder if name == TinyAutoencoder.__name__ else AutoencoderKL


def is_taef2_folder(folder: str | Path) -> bool:
    """True when ``folder`` holds either of the original TAEF2 files (load it with :func:`load_taef2`)."""
    path = Path(folder)
    return path.is_dir() and any((path / name).is_file() for name in (ENCODER_FILE, DECODER_FILE))


def _state_dict(path: Path, verify: bool) -> dict[str, torch.Tensor]:
    expected = KNOWN_SHA256.get(path.name)
    if verify and expected is not None:
        actual = file_sha256(path)
        if actual != expected:
            raise WeightsError(
                f"{path} has sha256 {actual} but the published {path.name} has {expected}: "
                f"the file is damaged or a different version; fetch it again from {SOURCE}"
            )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated file, not a pickle, unsafe pickle ...
        raise WeightsError(f"cannot read {path} ({type(exc).__name__}): fetch {path.name} again from {SOURCE}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} is not a TAEF2 state dict: fetch {path.name} from {SOURCE}")
    return state


def load_taef2(
    folder: str | Path,
    *,
    scaling_factor: float = 1.0,
    shift_factor: float = 0.0,
    verify: bool = True,
) -> TinyAutoencoder:
    """A float32 :class:`TinyAutoencoder` (eval mode, on the CPU) from a folder holding the two TAEF2 files.

    The sha256 of each file is checked against the published one (``verify``); a missing, damaged
    or wrong file is a :class:`WeightsError` that names the file and where to get it.
    """
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise WeightsError(f"TAEF2 folder not found: {path}; put {ENCODER_FILE} and {DECODER_FILE} from {SOURCE} in it")
    missing = [name for name in (ENCODER_FILE, DECODER_FILE) if not (path / name).is_file()]
    if missing:
        raise WeightsError(f"{path} lacks {' and '.join(missing)}: fetch {' and '.join(missing)} from {SOURCE} into it")
    encoder = _state_dict(path / ENCODER_FILE, verify)
    decoder = _state_dict(path / DECODER_FILE, verify)
    try:
        width, latent_channels = int(encoder["0.weight"].shape[0]), int(encoder[f"{_ENCODER_LAST}.weight"].shape[0])
        pool = any(".pool." in key for key in encoder)
    except KeyError as exc:
        raise WeightsError(
            f"{path / ENCODER_FILE} is not a TAEF2 encoder (no key {exc}): fetch {ENCODER_FILE} from {SOURCE}"
        ) from None
    vae = TinyAutoencoder(
        latent_channels=latent_channels, width=width, pool=pool, scaling_factor=scaling_factor, shift_factor=shift_factor
    )
    for part, state, file in ((vae.encoder, encoder, ENCODER_FILE), (vae.decoder, decoder, DECODER_FILE)):
        try:
            part.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            detail = " ".join(str(exc).split())[:200]
            raise WeightsError(
                f"{path / file} does not fit the TAEF2 architecture ({detail}): fetch {file} from {SOURCE}"
            ) from None
    return vae.float().eval()
