"""The deterministic shard plan: which identities each shard holds and which process writes it.

Shard s holds identities [s * shard_identities, (s + 1) * shard_identities) of the identity plan;
process r of W writes the shards with s % W == r. A shard's rows depend on the plan, the recipe and
the per-sample seeds only, never on W, on the process or on what ran before it, so a run resumed
with any number of processes writes the same shards as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass


from synthface.identities import IdentityPlan, sample_seeds


@dataclass(frozen=True)
class Shard:
    index: int
    total: int
    start: int  # first identity (inclusive)
    stop: int  # last identity (exclusive)

    @property
    def name(self) -> str:
        return f"train-{self.index:05d}-of-{self.total:05d}"

    @property
    def identities(self) -> range:
        return range(self.start, self.stop)


def make_shards(num_identities: int, shard_identities: int) -> list[Shard]:
    total = max(1, -(-num_identities // shard_identities))
    return [Shard(s, total, s * shard_identities, min((s + 1) * shard_identities, num_identities)) for s in range(total)]


def shards_for_process(shards: list[Shard], rank: int, world: int) -> list[Shard]:
    return [s for s in shards if s.index % world == rank]


@dataclass(frozen=True)
class Job:
    """One image to render: identity, sample index within the identity, and its seed."""

    identity: int
    sample: int
    seed: int


def shard_jobs(shard: Shard, plan: IdentityPlan, run_seed: int, per_identity: int) -> list[Job]:
    """Every sample of the shard's kept identities, in (identity, sample) order."""
    jobs = []
    for i in shard.identities:
        if not plan.kept[i]:
            continue
        for j, seed in enumerate(sample_seeds(run_seed, i, per_identity)):
            jobs.append(Job(i, j, int(seed)))
    return jobs
