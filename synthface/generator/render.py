"""The sample stage of a ``generate`` run: a shard's jobs rendered batch by batch, each identity's
candidates handed to the select stage once all are rendered (:mod:`synthface.generator.run`)."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import numpy as np

from synthface.config import GenerateRecipe
from synthface.dataset.plan import Job
from synthface.dataset.writer import ShardRows
from synthface.generator.model import GeneratorModel
from synthface.generator.overlap import Stage
from synthface.generator.pipeline import sample_batch, to_uint8
from synthface.generator.variation import Draws, NoDraws, StyleBank, draws_for
from synthface.identities import IdentityPlan
from synthface.selection import Candidate


class StageClock:
    """Seconds per stage, added from the sampling and the writing thread."""

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._seconds[stage] = self._seconds.get(stage, 0.0) + seconds

    def items(self) -> list[tuple[str, float]]:
        with self._lock:
            return list(self._seconds.items())


class ShardRenderer:
    """The sampling loop of a shard: renders its jobs batch by batch and hands each identity's
    candidates, once all are rendered, to the select stage."""

    def __init__(
        self,
        recipe: GenerateRecipe,
        model: GeneratorModel,
        identities: IdentityPlan,
        guide: Any,
        clock: StageClock,
        profile: dict[str, float] | None,
        bank: StyleBank | None = None,
    ) -> None:
        self.recipe, self.model, self.guide, self.clock, self.bank = recipe, model, guide, clock, bank
        self.embeddings = identities.embeddings
        self.profile = profile

    def render(
        self,
        jobs: list[Job],
        stage: Stage,
        *,
        select: Callable[[int, list[Candidate], ShardRows], None],
        advance: Callable[[int], None],
    ) -> ShardRows:
        """Sample the shard's jobs batch by batch; each batch's candidates go to ``stage``, which
        calls ``select`` for every identity whose candidates are all rendered.

        Returns the shard's rows, complete once ``stage`` has run every task submitted here."""
        sampling, variation = self.recipe.sampling, self.recipe.variation
        rows = ShardRows(with_full=self.recipe.output.store_full_resolution, with_variation=variation.active)
        pending = _Pending(jobs, rows, select)
        bank_size = len(self.bank) if self.bank else 0
        for start in range(0, len(jobs), sampling.batch_size):
            batch = jobs[start : start + sampling.batch_size]
            ids = [job.identity for job in batch]
            seeds = [job.seed for job in batch]
            tick = time.perf_counter()
            draws = draws_for(variation, self.embeddings[ids], seeds, sampling.guidance_scale, bank_size)
            images = to_uint8(
                sample_batch(
                    self.model,
                    draws.embeddings,
                    seeds,
                    scheduler=sampling.scheduler,
                    steps=sampling.steps,
                    guidance_scale=draws.guidance,
                    identity_scale=sampling.identity_scale,
                    identity_guide=self.guide,
                    init_images=draws.style_images(self.bank),
                    strength=variation.style_strength,
                    timings=self.profile,
                )
            )
            self.clock.add("render", time.perf_counter() - tick)
            stage.submit(pending.collect, batch, images, draws)
            advance(len(batch))
        return rows


class _Pending:
    """A shard's candidates waiting for the rest of their identity's; an identity complete goes to ``select``."""

    def __init__(self, jobs: list[Job], rows: ShardRows, select: Callable[[int, list[Candidate], ShardRows], None]) -> None:
        self.rows, self.select = rows, select
        self.candidates: dict[int, list[Candidate]] = {}
        self.remaining: dict[int, int] = {}
        for job in jobs:
            self.remaining[job.identity] = self.remaining.get(job.identity, 0) + 1

    def collect(self, batch: list[Job], images: np.ndarray, draws: Draws | NoDraws) -> None:
        """One batch's candidates; each identity whose candidates are all rendered is selected."""
        for k, (job, image) in enumerate(zip(batch, images)):
            self.candidates.setdefault(job.identity, []).append(
                Candidate(job.identity, job.sample, job.seed, image, draws.image(k))
            )
            self.remaining[job.identity] -= 1
            if self.remaining[job.identity] == 0:
                self.select(job.identity, self.candidates.pop(job.identity), self.rows)
