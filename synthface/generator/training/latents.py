"""The latent space of a latent generator: its VAE, and the cached latents of every training crop."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthface.atomic import atomic_save_npy
from synthface.errors import InputError, WeightsError
from synthface.generator.training.data import FaceData
from synthface.runtime import Progress


def load_vae(spec: str, device: torch.device) -> Any:
    """The latent space: a folder holding the two TAEF2 files (taef2_encoder.pth, taef2_decoder.pth),
    or an AutoencoderKL / TinyAutoencoder save_pretrained folder (itself or its vae/ sub-folder), or a Hub id."""
    from diffusers import AutoencoderKL

    from synthface.generator.taef2 import is_taef2_folder, load_taef2, vae_class

    path = Path(spec).expanduser()
    if is_taef2_folder(path):
        return load_taef2(path).to(device).eval().requires_grad_(False)
    kwargs: dict[str, Any] = {}
    if path.is_dir() and (path / "vae").is_dir() and not (path / "config.json").is_file():
        kwargs["subfolder"] = "vae"
    cls = vae_class(path / kwargs.get("subfolder", "")) if path.is_dir() else AutoencoderKL
    try:
        vae = cls.from_pretrained(str(path) if path.exists() else spec, **kwargs)
    except Exception as exc:  # noqa: BLE001 - offline, bad repo id, wrong files ...
        raise WeightsError(
            f"cannot load the VAE '{spec}' ({type(exc).__name__}): pass a folder holding taef2_encoder.pth and "
            f"taef2_decoder.pth (madebyollin/taesd) or a local AutoencoderKL folder with --set model.vae=DIR, "
            f"or fetch it first (huggingface-cli download {spec})"
        ) from None
    return vae.to(device).eval().requires_grad_(False)


def encode_latents(vae: Any, crops: np.ndarray, batch_size: int, device: torch.device, progress: Progress) -> np.ndarray:
    """(N, 2, C, h, w) float16 latent means of each crop and its mirror, scaled as the sampler decodes them."""
    scale = float(getattr(vae.config, "scaling_factor", 1.0))
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
    out = None
    progress.start(len(crops), "encoding latents")
    for start in range(0, len(crops), batch_size):
        x = torch.from_numpy(crops[start : start + batch_size]).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        both = torch.cat([x, x.flip(-1)]).to(device, vae.dtype)
        with torch.no_grad():
            z = (vae.encode(both).latent_dist.mean.float() - shift) * scale
        n = len(x)
        z = torch.stack([z[:n], z[n:]], dim=1).cpu().half().numpy()
        if out is None:
            out = np.zeros((len(crops), *z.shape[1:]), np.float16)
        out[start : start + n] = z
        progress.advance(n)
    progress.finish()
    return out if out is not None else np.zeros((0,), np.float16)


def latent_cache(
    vae_spec: str, faces: FaceData, cache_dir: Path, vae: Any, batch_size: int, device: torch.device, progress: Progress
) -> np.ndarray:
    tag = hashlib.sha256(
        f"{faces.cache_key}|{vae_spec}|{json.dumps(dict(vae.config), sort_keys=True, default=str)}".encode()
    ).hexdigest()[:20]
    path = cache_dir / f"latents-{tag}.npy"
    if path.is_file():
        return np.load(path, mmap_mode="r")
    latents = encode_latents(vae, faces.crops, batch_size, device, progress)
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_save_npy(path, latents)
    return np.load(path, mmap_mode="r")


def latent_std(latents: np.ndarray, limit: int = 4096) -> float:
    """The standard deviation of cached latents (an evenly spaced subset of at most ``limit`` faces)."""
    idx = np.unique(np.linspace(0, len(latents) - 1, min(limit, len(latents))).round().astype(int))
    std = float(np.asarray(latents[idx], dtype=np.float32).std())
    if not np.isfinite(std) or std <= 0:
        raise InputError("the cached training latents are constant or not finite: delete the latent cache and retry")
    return std
