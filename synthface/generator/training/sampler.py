"""A seeded, resumable order over the training set: one fresh permutation per epoch, position saved."""

from __future__ import annotations

from typing import Any

import torch


class EpochSampler:
    """Hands out global batches of indices; epoch ``e`` is ``randperm(n)`` seeded from (seed, e).

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
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            self._perm = torch.randperm(self.size, generator=gen)
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
