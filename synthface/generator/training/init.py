"""``train.init_from``: start a run from the weights of an existing native model (fine-tuning)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from synthface.config import TrainRecipe
from synthface.errors import ConfigError, InputError


def check_init_from(config: TrainRecipe) -> None:
    """Before anything is written: ``train.init_from`` names a native model of the recipe's embedder and space
    (its synthface.json only; whether the weights fit the model section shows when they are loaded)."""
    from synthface.generator.native import NativeMeta

    if not config.train.init_from:
        return
    src = Path(config.train.init_from)
    if not src.is_dir():
        raise InputError(
            f"train.init_from {src} is not a folder: name a native model folder (a run's RUN_DIR/model or a models/ folder)"
        )
    meta = NativeMeta.read(src)
    if meta.embedder != config.embedder or meta.latent != config.model.latent:
        raise ConfigError(
            f"train.init_from {src} is a {'latent' if meta.latent else 'pixel'} {meta.embedder} model but the "
            f"recipe trains a {'latent' if config.model.latent else 'pixel'} {config.embedder} one: use its recipe"
        )


def init_weights(model: Any, config: TrainRecipe) -> dict[str, Any]:
    """``train.init_from``: copy that model's UNet, projector and conditioning centre into ``model``.

    Returns what the exported model records of its start (the folder as given and its UNet's sha256).
    A resumed run loads its checkpoint over these weights afterwards.
    """
    from synthface.generator.native import load_native

    check_init_from(config)
    src = Path(config.train.init_from or "")
    init = load_native(src)  # fp32: a shipped fp16 model is upcast
    for part in ("unet", "projector"):
        try:
            getattr(model, part).load_state_dict(getattr(init, part).state_dict(), strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0][:160]
            raise ConfigError(
                f"train.init_from {src}: its {part} does not match the recipe's model section ({first}); "
                "train with the model section it was made with"
            ) from None
    mean = init.meta.condition_mean  # the weights learned this centring of the condition: keep it
    model.meta.condition_mean = mean
    model.condition_mean = torch.tensor(mean, dtype=torch.float32) if mean is not None else None
    unet_file = (init.meta.files or {}).get("unet/diffusion_pytorch_model.safetensors") or {}
    return {"path": str(config.train.init_from), "unet_sha256": unet_file.get("sha256")}
