"""The diffusers schedulers the sampling loop runs: building one from a model's training scheduler
config (:func:`make_scheduler`), setting its timesteps, the tail of a schedule an image-started
(SDEdit) sample runs, and the cumulative alpha of a timestep.
"""

from __future__ import annotations

from typing import Any

import torch

from synthface.errors import ConfigError

SCHEDULER_NAMES = ("ddpm", "ddim", "dpmsolver++", "lcm")


def make_scheduler(name: str, base_config: dict[str, Any]) -> Any:
    """A fresh diffusers scheduler of kind ``name`` built from the model's training scheduler config."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, LCMScheduler
    from diffusers.utils import logging as dlogging

    kinds: dict[str, tuple[Any, dict[str, Any]]] = {
        "ddpm": (DDPMScheduler, {}),
        "ddim": (DDIMScheduler, {}),
        "dpmsolver++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
        "lcm": (LCMScheduler, {}),
    }
    if name not in kinds:
        raise ConfigError(f"unknown scheduler '{name}': use one of {', '.join(SCHEDULER_NAMES)}")
    cls, extra = kinds[name]
    config = {k: v for k, v in base_config.items() if not k.startswith("_")}
    config.update(extra)
    previous = dlogging.get_verbosity()
    dlogging.set_verbosity_error()  # keys of the training scheduler another kind does not use
    try:
        return cls.from_config(config)
    finally:
        dlogging.set_verbosity(previous)


def set_timesteps(scheduler: Any, name: str, steps: int, device: torch.device) -> None:
    """``steps`` inference timesteps on ``device`` (LCM: over at least as many original steps)."""
    if name == "lcm":
        original = max(int(scheduler.config.original_inference_steps), steps)
        scheduler.set_timesteps(steps, device=device, original_inference_steps=original)
    else:
        scheduler.set_timesteps(steps, device=device)


def partial_schedule(sched: Any, strength: float) -> torch.Tensor:
    """The timesteps of the last ``strength`` of the schedule (diffusers' img2img convention)."""
    if not 0.0 < strength <= 1.0:
        raise ConfigError(f"strength must be in (0, 1], got {strength}")
    order = int(getattr(sched, "order", 1))
    steps = len(sched.timesteps) // order
    start = max(steps - min(int(steps * strength), steps), 0)
    if start >= steps:
        raise ConfigError(f"strength {strength} leaves no step of {steps} to run: raise it or the number of steps")
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(start * order)
    return sched.timesteps[start * order :]


def alpha_bar(scheduler: Any, t: torch.Tensor) -> float:
    """The cumulative alpha (signal fraction) of timestep ``t``."""
    return float(scheduler.alphas_cumprod[int(t)])
