"""What a ``generate`` run records: :class:`RunSummary` (what every process returns), a part job's
record, and the dataset's summary.json with the final identities.parquet (the finish stage).

The run itself is :mod:`synthface.generator.run`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from synthface.atomic import atomic_write_bytes, atomic_write_json
from synthface.config import RESUME_FREE_KEYS, GenerateRecipe, config_dict, config_hash
from synthface.dataset.layout import CARD_FILE, CONFIG_FILE, DATA_DIR, IDENTITIES_FILE, SUMMARY_FILE
from synthface.dataset.plan import Shard, make_shards
from synthface.dataset.writer import read_marker, shard_done, table_bytes
from synthface.errors import SynthfaceError
from synthface.generator.model import GeneratorModel
from synthface.identities import IdentityPlan, read_plan_metadata
from synthface.selection import Selector


@dataclass
class RunSummary:
    """What a run returns, the same on every process: this process's work and, on process 0, the run's record.

    ``record`` is the dataset's summary.json (a whole run, or a finished run found again) or a part
    job's record (``--part``: ``part``, ``part_shards``, ...); the other processes have None.
    :meth:`as_dict` is what the CLI prints: the record where there is one, else this process's counts.
    """

    rank: int
    shards_written: int = 0
    shards_skipped: int = 0
    images_rendered: int = 0
    rows_written: int = 0
    seconds: float = 0.0  # this process's sampling loop
    timings: dict[str, float] = field(default_factory=dict)
    record: dict[str, Any] | None = None

    def counts(self) -> dict[str, Any]:
        """This process's work (what process 0 gathers from every process)."""
        return {
            "rank": self.rank,
            "shards_written": self.shards_written,
            "shards_skipped": self.shards_skipped,
            "images_rendered": self.images_rendered,
            "rows_written": self.rows_written,
            "seconds": self.seconds,
            "timings": self.timings,
        }

    def as_dict(self) -> dict[str, Any]:
        return dict(self.record) if self.record is not None else self.counts()


def finished_summary(out: Path, recipe: GenerateRecipe, guard_hash: str) -> dict[str, Any] | None:
    """The summary of a finished run of this config in ``out`` (every shard committed, identities and
    card written), or None when anything is left to do."""
    summary = read_marker(out / SUMMARY_FILE)
    if summary is None or summary.get("config_hash") != guard_hash or "identities_planned" not in summary:
        return None
    if not (out / CARD_FILE).is_file() or read_plan_metadata(out / IDENTITIES_FILE).get("config_hash") != guard_hash:
        return None
    shards = make_shards(int(summary["identities_planned"]), recipe.shard_identities)
    if len(shards) != summary.get("shards") or any(shard_done(out / DATA_DIR, s, guard_hash) is None for s in shards):
        return None
    return summary


def part_record(
    out: Path, part: str, ours: list[Shard], shards: list[Shard], guard_hash: str, per_process: list[RunSummary]
) -> dict[str, Any]:
    """Process 0 of a part job after the barrier: its shards are all committed (a failure raised)."""
    return {
        "out": str(out),
        "part": part,
        "part_shards": len(ours),
        "shards": len(shards),
        "shards_written": sum(p.shards_written for p in per_process),
        "shards_skipped": sum(p.shards_skipped for p in per_process),
        "processes": len(per_process),
        "images_rendered": sum(p.images_rendered for p in per_process),
        "rows_written": sum(p.rows_written for p in per_process),
        "seconds": max((p.seconds for p in per_process), default=0.0),
        "config_hash": guard_hash,
        "timings": per_process[0].timings,
    }


def dataset_record(
    out: Path,
    recipe: GenerateRecipe,
    model: GeneratorModel,
    plan: IdentityPlan,
    shards: list[Shard],
    guard_hash: str,
    per_process: list[RunSummary],
    resuming: bool,
    started: float,
    selector: Selector,
) -> dict[str, Any]:
    """Process 0 after the barrier: check every marker, write identities.parquet and summary.json; returns the summary."""
    data_dir = out / DATA_DIR
    # the selector's final pass over all committed shards (filtering: separation, leakage, contiguous labels)
    report = selector.finalize(out, plan, shards, guard_hash)
    rows = 0
    present: set[int] = set()
    missing = []
    for shard in shards:
        info = shard_done(data_dir, shard, guard_hash, verify=False)  # every process checked its own shards
        if info is None:
            missing.append(shard.name)
            continue
        rows += int(info["rows"])
        present.update(int(i) for i in info.get("identities_kept", []))
    if missing:
        raise SynthfaceError(
            f"{len(missing)} shard(s) are missing after the run (first: {missing[0]}): run the same command again to finish them"
        )
    kept = plan.kept & np.isin(np.arange(len(plan)), sorted(present))
    reasons = [r if r or k else "filter: no sample kept" for r, k in zip(plan.reasons, kept)]
    final = IdentityPlan(plan.strategy, plan.embeddings, kept, reasons, plan.seeds, plan.attempts, plan.sources)
    if report is not None:
        final.reasons = [r or (report.reasons[i] if not k else "") for i, (r, k) in enumerate(zip(final.reasons, kept))]
    table = final.to_table({"config_hash": guard_hash})
    atomic_write_bytes(out / IDENTITIES_FILE, table_bytes(report.extend(table) if report is not None else table))
    rendered = sum(p.images_rendered for p in per_process)
    seconds = max((p.seconds for p in per_process), default=0.0)
    summary = {
        "out": str(out),
        "model": recipe.model,
        "family": model.family,
        "embedder": model.embedder,
        "identities_planned": len(plan),
        "identities_kept": int(kept.sum()),
        "images": rows,
        "shards": len(shards),
        "shards_written": sum(p.shards_written for p in per_process),
        "shards_skipped": sum(p.shards_skipped for p in per_process),
        "resumed": bool(resuming),
        "processes": len(per_process),
        "images_rendered": rendered,
        "images_per_second": rendered / seconds if seconds > 0 else None,
        "seconds": time.perf_counter() - started,
        "config_hash": guard_hash,
        # why config.yaml's header hash differs: it covers every key, this one the keys that decide the images
        "config_hash_covers": f"every recipe key but {', '.join(RESUME_FREE_KEYS)} (a resumed run may change them)",
        "config_yaml_hash": config_hash(config_dict(recipe)),
        "timings": per_process[0].timings,
        "files": {
            "config": str(out / CONFIG_FILE),
            "identities": str(out / IDENTITIES_FILE),
            "data": str(data_dir),
            "summary": str(out / SUMMARY_FILE),
        },
    }
    if report is not None:
        summary["filter"] = report.summary
    atomic_write_json(out / SUMMARY_FILE, summary)
    return summary
