"""What both trainers share: the seeded epoch order, precision, the resume check and torch's thread count.

Used by the native generator's trainer (:mod:`synthface.generator.training.loop`) and the
recognizer's (:mod:`synthface.recognition.train`), so the two cannot drift apart:

- one epoch order: epoch ``e`` of a set of ``n`` items is ``randperm(n)`` seeded with
  ``seed * 1_000_003 + e`` (:func:`epoch_permutation`). :class:`EpochSampler` hands it out as one
  stream of global batches that crosses epochs (its position is checkpointed);
  :class:`ProcessEpochSampler` hands each process its slice of whole global batches per epoch
  (the tail that fills no batch is dropped; the position follows from the step).
- one precision rule (:func:`resolve_precision`): ``auto`` is bf16 on CUDA GPUs that support it,
  else fp16, and none on a CPU; ``fp16`` on a CPU is refused (CPUs have no fp16 autocast worth
  the name), ``bf16`` and ``no`` are taken as given.
- one resume check (:func:`check_resume`): an output folder that holds a run is continued only
  with ``--resume``; :func:`recipe_changes` names what a resumed recipe changed.
- :func:`torch_threads`: ``train.threads`` for the duration of a run, torch's own count after it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from torch.utils.data import Sampler

from synthface.config import diff_keys
from synthface.errors import ConfigError, InputError


def epoch_permutation(size: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of ``size`` items in epoch ``epoch`` of a run seeded with ``seed`` (int64 indices)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(size, generator=gen)


class EpochSampler:
    """Hands out global batches of indices from :func:`epoch_permutation`, crossing epochs.

    Its state (epoch, position) goes into every checkpoint (``accelerator.register_for_checkpointing``),
    so a resumed run continues with exactly the batches the uninterrupted run would have drawn.
    """

    def __init__(self, size: int, seed: int = 0) -> None:
        if size < 1:
            raise ValueError("EpochSampler needs at least one item")
        self.size = int(size)
        self.seed = int(seed)
        self.epoch = 0
        self.position = 0
        self._perm: torch.Tensor | None = None

    def _permutation(self) -> torch.Tensor:
        if self._perm is None:
            self._perm = epoch_permutation(self.size, self.seed, self.epoch)
        return self._perm

    def take(self, count: int) -> torch.Tensor:
        """The next ``count`` indices (int64), crossing into the next epoch's permutation when needed."""
        out = []
        need = int(count)
        while need > 0:
            perm = self._permutation()
            chunk = perm[self.position : self.position + need]
            out.append(chunk)
            need -= len(chunk)
            self.position += len(chunk)
            if self.position >= self.size:
                self.epoch += 1
                self.position = 0
                self._perm = None
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)

    def state_dict(self) -> dict[str, Any]:
        return {"size": self.size, "seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["size"]) != self.size or int(state["seed"]) != self.seed:
            raise ValueError("sampler state belongs to another data set or seed")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._perm = None


class ProcessEpochSampler(Sampler[int]):
    """This process's share of :func:`epoch_permutation`, from a given global step on.

    Global step s takes positions [s*B, (s+1)*B) of the permutation (B = global batch);
    process r of W takes the r-th slice of b = B/W of them. Same seed, same batches,
    whatever the number of processes or where a run was resumed.
    """

    def __init__(self, n: int, seed: int, per_process: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.seed, self.b, self.rank, self.world = n, seed, per_process, rank, world
        self.epoch, self.skip = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        return self.n // (self.b * self.world)

    def set_epoch(self, epoch: int, skip_steps: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_steps

    def __iter__(self) -> Iterator[int]:
        perm = epoch_permutation(self.n, self.seed, self.epoch)
        big = self.b * self.world
        for s in range(self.skip, self.steps_per_epoch):
            start = s * big + self.rank * self.b
            yield from perm[start : start + self.b].tolist()

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.skip) * self.b


def resolve_precision(name: str, device_type: str) -> str:
    """Accelerate's ``mixed_precision`` for a recipe's ``train.mixed_precision`` on a ``device_type`` device."""
    if device_type != "cuda":
        if name == "fp16":
            raise ConfigError("train.mixed_precision=fp16 needs a CUDA GPU: use auto, no or bf16 on CPU")
        return "bf16" if name == "bf16" else "no"
    if name == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return name


def check_resume(run_dir: Path, holds_run: bool, resume: bool) -> bool:
    """Whether to continue the run in ``run_dir``: refuses to start over a run without ``--resume``.

    ``holds_run``: the folder holds a checkpoint or a finished model. Returns True when there is a
    run to continue (``resume`` and ``holds_run``).
    """
    if holds_run and not resume:
        raise InputError(f"{run_dir} already holds a training run: pass --resume to continue it or choose a new --out")
    return resume and holds_run


def recipe_changes(saved: dict[str, Any], current: dict[str, Any], free: Iterable[str] = ()) -> list[str]:
    """Dotted recipe keys that differ between a run's saved recipe and the current one, less the ``free`` ones."""
    allowed = set(free)
    return [key for key in diff_keys(saved, current) if key not in allowed]


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's CPU thread count set to ``threads`` (None: left alone) inside, and what it was after."""
    before = torch.get_num_threads()
    try:
        if threads:
            torch.set_num_threads(threads)
        yield
    finally:
        torch.set_num_threads(before)
