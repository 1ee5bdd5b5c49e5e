"""Device and dtype choice, seeding, and the progress hook library code reports through."""

from __future__ import annotations

import random
from typing import Any, Protocol

import numpy as np
import torch

from .errors import InputError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str | None = "auto") -> torch.device:
    """'auto' picks CUDA, then MPS, then CPU; an explicit device that is absent is an error."""
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device '{name}': use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device '{name}' asked for but CUDA is not available: use --set device=cpu")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """Map fp32/fp16/bf16 to a torch dtype; half precision on CPU falls back to fp32 for fp16."""
    if name not in DTYPES:
        raise InputError(f"unknown dtype '{name}': use fp32, fp16 or bf16")
    dtype = DTYPES[name]
    if device.type == "cpu" and dtype == torch.float16:
        return torch.float32
    return dtype


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class Progress(Protocol):
    """What long-running library code reports to; the CLI renders it, tests may ignore it."""

    def start(self, total: int | None, description: str) -> None: ...

    def advance(self, n: int = 1, **info: Any) -> None: ...

    def finish(self) -> None: ...


class NullProgress:
    """A progress hook that does nothing (the library default)."""

    def start(self, total: int | None, description: str) -> None:
        pass

    def advance(self, n: int = 1, **info: Any) -> None:
        pass

    def finish(self) -> None:
        pass


def progress_or_null(progress: Progress | None) -> Progress:
    return progress if progress is not None else NullProgress()
