"""``train.init_from``: start a run from the weights of an existing native model (fine-tuning)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from synthface.config import TrainRecipe
from synthface.errors import ConfigError, InputError


def init_weights(model: Any, config: TrainRecipe) -> dict[str, Any]:
    """``train.init_from``: copy that model's UNet, projector and conditioning centre into ``model``.

    Returns what the exported model records of its start (the folder as given and its UNet's sha256).
    A resumed run loads its checkpoint over these weights afterwards.
    """
    from synthface.generator.native import load_native

    src = Path(config.train.init_from or "")
    if not src.is_dir():
        raise InputError(
            f"train.init_from {src} is not a folder: name a native model folder (a run's RUN_DIR/model or a models/ folder)"
        )
    init = load_native(src)  # fp32: a shipped fp16 model is upcast
    if init.meta.embedder != config.embedder or init.meta.latent != config.model.latent:
        raise ConfigError(
            f"train.init_from {src} is a {'latent' if init.meta.latent else 'pixel'} {init.meta.embedder} model but the "
            f"recipe trains a {'latent' if config.model.latent else 'pixel'} {config.embedder} one: use its recipe"
        )
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
