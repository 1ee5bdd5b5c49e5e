"""A whole `synthface generate` run: plan identities, render each shard, select, write; resumable.

Stages per shard: render (the sampling loop, batch by batch) -> select (per identity: the seam
where filtering plugs in; with filtering off every sample is kept as generated) -> encode + write
(Parquet shard, then its commit marker). Under ``accelerate launch`` every process runs this
function: process 0 locks the output directory, checks/writes config.yaml and computes the
identity plan, the others receive its verdict and plan through a broadcast, each process writes
its own shards (s % W == rank), and after a barrier process 0 writes identities.parquet and
summary.json.

The stages live in their own modules: the select stage in :mod:`synthface.generator.selection`,
the output folder (lock, config guard, inputs check, reset) in :mod:`synthface.generator.output`,
the identity plan in :mod:`synthface.generator.planning`, process coordination in
:mod:`synthface.generator.distributed`; this module runs them.

Parts (``part="I/N"``, e.g. the jobs of a Slurm array): a part job renders only the shards s with
s % N == I (its processes split them as above) and skips the final pass; part jobs share --out (see
``synthface.dataset.locks.PartLock``), each writes config.yaml if absent (else checks it) and
computes the identity plan itself. A plain run afterwards finds every shard committed and does the final pass.

Resume: a shard whose marker matches its Parquet checksum and the config hash is skipped; the
config hash covers the whole recipe except ``RESUME_FREE_KEYS`` (settings that cannot change an
image, so a resumed run may change them).
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from synthface.config import GenerateRecipe, RESUME_FREE_KEYS, config_dict, config_hash, resume_guard
from synthface.dataset.locks import PartLock, RunLock
from synthface.dataset.plan import Job, Shard, make_shards, shard_jobs, shards_for_process
from synthface.dataset.writer import (
    IMAGE_EXT,
    ShardRows,
    atomic_write_bytes,
    atomic_write_json,
    encode_image,
    read_marker,
    shard_done,
    table_bytes,
    write_shard,
)
from synthface.errors import InputError, SynthfaceError
from synthface.generator.distributed import gather, on_main, process_state
from synthface.generator.families import check_model, load_model
from synthface.generator.fastpath import apply_fast_path
from synthface.generator.planning import identity_guide_for, identity_plan, with_model_leakage_gallery
from synthface.generator.output import (
    CONFIG_FILE,
    IDENTITIES_FILE,
    SUMMARY_FILE,
    has_run_records,
    prepare_output,
    run_inputs,
)
from synthface.generator.pipeline import GeneratorModel, sample_batch, to_uint8
from synthface.generator.selection import make_selector
from synthface.identities import IdentityPlan, plan_labels, read_plan_metadata
from synthface.generator.overlap import Stage, make_stage
from synthface.generator.variation import StyleBank, draw
from synthface.output_folder import check_output_folder
from synthface.runtime import Progress, progress_or_null, resolve_dtype
from synthface.selection import Candidate, Selector

# --------------------------------------------------------------------------- parts (job arrays)


def parse_part(text: str) -> tuple[int, int]:
    """``"I/N"`` (0-based part I of N) -> (I, N); InputError for anything else."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if match is None:
        raise InputError(f"--part must be I/N (part I of N, counted from 0, e.g. 0/8), got '{text}'")
    index, parts = int(match[1]), int(match[2])
    if parts < 1 or index >= parts:
        raise InputError(f"--part {text}: needs N >= 1 and 0 <= I < N (parts are numbered 0 to N-1)")
    return index, parts


# --------------------------------------------------------------------------- the run


def generate_dataset(
    recipe: GenerateRecipe,
    out: str | Path,
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
    identity_guide: Any = None,
    profile: bool = False,
    state: Any = None,
    part: str | None = None,
) -> dict[str, Any]:
    """Generate (or resume) the dataset of ``recipe`` into ``out``; returns the run summary.

    Every process of an ``accelerate launch`` calls this; only process 0's summary covers the
    whole dataset. ``profile`` adds per-stage timings of the sampling loop (condition, unet,
    scheduler, decode) to the summary (it synchronises the GPU, so it is off by default).
    ``part="I/N"`` renders only the shards s with s % N == I and skips the final pass; process 0
    then returns a part summary (``part``, ``part_shards``: that many committed, ``shards``, ...).
    """
    index, parts = parse_part(part) if part is not None else (0, 1)
    if part is not None and overwrite:
        raise InputError(
            "--overwrite cannot be combined with --part (it would delete the other parts' shards): "
            "delete --out, or run once with --overwrite and no --part"
        )
    state = state or process_state()
    out = Path(out)
    progress = progress_or_null(progress)
    resolved = config_dict(recipe)
    guard = resume_guard(resolved)
    guard_hash = config_hash(guard)
    data_dir = out / "data"
    lock: RunLock | PartLock | None = None
    timings: dict[str, float] = {}
    started = time.perf_counter()
    try:
        # every input is checked before --out is created or changed: the folder, the model, the plan
        on_main(state, lambda: check_output_folder(out, "generate", CONFIG_FILE, GenerateRecipe, records=has_run_records))

        def finished() -> dict[str, Any] | None:
            nonlocal lock
            done = None if overwrite or part is not None else finished_summary(out, recipe, guard_hash)
            if done is None:
                return None
            lock = RunLock(out)  # no other run may be writing the folder whose summary is rewritten
            lock.acquire()
            done.update({"resumed": True, "shards_written": 0, "shards_skipped": done["shards"], "images_rendered": 0,
                         "images_per_second": None, "seconds": time.perf_counter() - started})  # fmt: skip
            if isinstance(done.get("filter"), dict):
                done["filter"]["shards_relabelled"] = 0  # the final pass did not run again
            atomic_write_json(out / SUMMARY_FILE, done)
            return done

        done = on_main(state, finished)  # every shard and the final pass are there: nothing to render, no model to load
        if done is not None:
            return done if state.is_main_process else {"rank": state.process_index, "shards_written": 0}
        device = state.device
        dtype = resolve_dtype(recipe.sampling.dtype, device)
        tick = time.perf_counter()
        model = load_model(recipe.model, device, dtype, options={"arc2face": recipe.arc2face.model_dump()})
        check_model(model, embedder=recipe.identities.embedder)
        s = recipe.sampling
        apply_fast_path(model, channels_last=s.channels_last, compile=s.compile, vae_tiling=s.vae_tiling)
        timings["load"] = time.perf_counter() - tick
        tick = time.perf_counter()
        plan: IdentityPlan = on_main(state, lambda: identity_plan(recipe, model, out, guard_hash, device, not overwrite))
        check_model(model, dim=plan.dim)
        timings["plan"] = time.perf_counter() - tick
        guide = identity_guide
        if recipe.sampling.identity_scale > 0 and guide is None:
            guide = identity_guide_for(model, device, recipe.sampling.identity_guide)
        # the recipe as written stays the run's config (resume compares it); only the filter sees the model's gallery
        selector = make_selector(with_model_leakage_gallery(recipe, model), model, plan)
        bank = StyleBank(recipe.variation.style_bank, model.image_size) if recipe.variation.style_bank else None

        def prepare() -> bool:
            nonlocal lock
            lock = RunLock(out) if part is None else PartLock(out, index, parts)
            resuming = prepare_output(out, recipe, guard, overwrite, lock, part is not None, run_inputs(recipe, model, plan))
            if part is None:
                atomic_write_bytes(out / IDENTITIES_FILE, table_bytes(plan.to_table({"config_hash": guard_hash})))
            return resuming

        resuming = on_main(state, prepare)

        shards = make_shards(len(plan), recipe.shard_identities)
        ours = shards_for_process(shards, index, parts)  # this part's shards: all of them without --part
        mine = ours[state.process_index :: state.num_processes]
        tick = time.perf_counter()
        todo = [s for s in mine if shard_done(data_dir, s, guard_hash) is None]
        timings["verify"] = time.perf_counter() - tick
        per_identity = selector.candidates_per_identity(recipe.images_per_identity)
        writer = _ShardRenderer(recipe, model, plan, selector, guide, timings if profile else None, bank)
        total = sum(int(plan.kept[s.start : s.stop].sum()) for s in todo) * per_identity
        progress.start(total, "generating")
        rendered = 0
        render_start = time.perf_counter()

        def advance(n: int) -> None:
            nonlocal rendered
            rendered += n
            elapsed = max(time.perf_counter() - render_start, 1e-9)
            if recipe.filter.enabled:  # with the filter off every image is kept: no count to show
                progress.advance(n, ips=rendered / elapsed, accepted=writer.kept)
            else:
                progress.advance(n, ips=rendered / elapsed)

        def commit(shard: Shard, rows: ShardRows) -> None:
            tick = time.perf_counter()
            # a selector's per-shard record (filtering) is written before the shard and noted in its marker
            write_shard(data_dir, shard, rows, guard_hash, selector.shard_extra(out, shard))
            writer.add("write", time.perf_counter() - tick)
            writer.rows_written += len(rows)

        # sampling here; selection, encoding and writing in order, behind it when sampling.overlap is on (overlap.py)
        with make_stage(recipe.sampling.overlap) as stage:
            for shard in todo:
                stage.submit(commit, shard, writer.render(shard_jobs(shard, plan, recipe.seed, per_identity), advance, stage))
        render_seconds = time.perf_counter() - render_start
        progress.finish()
        for key, value in writer.timings.items():
            timings[key] = timings.get(key, 0.0) + value
        mine_stats = {
            "rank": state.process_index,
            "shards_written": len(todo),
            "shards_skipped": len(mine) - len(todo),
            "images_rendered": rendered,
            "rows_written": writer.rows_written,
            "seconds": render_seconds,
            "timings": timings,
        }
        state.wait_for_everyone()
        per_process = gather(state, mine_stats)
        summary: dict[str, Any] = {}
        if state.is_main_process and part is not None:
            summary = _part_summary(out, f"{index}/{parts}", ours, shards, guard_hash, per_process)
        elif state.is_main_process:
            summary = _finish(out, recipe, model, plan, shards, guard_hash, per_process, resuming, started, selector)
        state.wait_for_everyone()
        return summary if state.is_main_process else mine_stats
    finally:
        if lock is not None:
            lock.release()


def finished_summary(out: Path, recipe: GenerateRecipe, guard_hash: str) -> dict[str, Any] | None:
    """The summary of a finished run of this config in ``out`` (every shard committed, identities and
    card written), or None when anything is left to do."""
    summary = read_marker(out / SUMMARY_FILE)
    if summary is None or summary.get("config_hash") != guard_hash or "identities_planned" not in summary:
        return None
    from synthface.dataset.card import CARD_FILE

    if not (out / CARD_FILE).is_file() or read_plan_metadata(out / IDENTITIES_FILE).get("config_hash") != guard_hash:
        return None
    shards = make_shards(int(summary["identities_planned"]), recipe.shard_identities)
    if len(shards) != summary.get("shards") or any(shard_done(out / "data", s, guard_hash) is None for s in shards):
        return None
    return summary


class _ShardRenderer:
    """Renders a shard's jobs batch by batch, selects per identity, encodes the kept images."""

    def __init__(
        self,
        recipe: GenerateRecipe,
        model: GeneratorModel,
        plan: IdentityPlan,
        selector: Selector,
        guide: Any,
        profile: dict[str, float] | None,
        bank: StyleBank | None = None,
    ) -> None:
        self.recipe, self.model, self.selector, self.guide, self.bank = recipe, model, selector, guide, bank
        self.embeddings = plan.embeddings
        # With every identity kept, label == plan rank among kept identities. A filter that drops
        # identities after rendering records them per shard (marker "identities_kept"); making the
        # labels contiguous again is then a relabel pass over the markers once all shards exist.
        self.labels = plan_labels(plan.kept)
        self.profile = profile
        self.timings: dict[str, float] = {}
        self.fmt = recipe.output.image_format
        self.kept = 0  # images selected so far (the progress display)
        self.rows_written = 0
        self._lock = threading.Lock()  # timings are added from the sampling and the writing thread

    def add(self, part: str, seconds: float) -> None:
        with self._lock:
            self.timings[part] = self.timings.get(part, 0.0) + seconds

    def render(self, jobs: list[Job], advance: Callable[[int], None], stage: Stage) -> ShardRows:
        """Sample the shard's jobs batch by batch; each batch's selection and encoding go to ``stage``.

        Returns the shard's rows, complete once ``stage`` has run every task submitted here."""
        s, v = self.recipe.sampling, self.recipe.variation
        rows = ShardRows(with_full=self.recipe.output.store_full_resolution, with_variation=v.active)
        pending: dict[int, list[Candidate]] = {}
        remaining: dict[int, int] = {}
        for job in jobs:
            remaining[job.identity] = remaining.get(job.identity, 0) + 1
        for start in range(0, len(jobs), s.batch_size):
            batch = jobs[start : start + s.batch_size]
            ids = [j.identity for j in batch]
            seeds = [j.seed for j in batch]
            tick = time.perf_counter()
            draws = (
                draw(v, self.embeddings[ids], seeds, s.guidance_scale, len(self.bank) if self.bank else 0) if v.active else None
            )
            images = to_uint8(
                sample_batch(
                    self.model,
                    self.embeddings[ids] if draws is None else draws.embeddings,
                    seeds,
                    scheduler=s.scheduler,
                    steps=s.steps,
                    guidance_scale=s.guidance_scale if draws is None else draws.guidance,
                    identity_scale=s.identity_scale,
                    identity_guide=self.guide,
                    init_images=None if draws is None or self.bank is None else self.bank.batch(draws.style),
                    strength=v.style_strength,
                    timings=self.profile,
                )
            )
            self.add("render", time.perf_counter() - tick)
            stage.submit(self._collect, batch, images, draws, pending, remaining, rows)
            advance(len(batch))
        return rows

    def _collect(self, batch: list[Job], images: np.ndarray, draws: Any, pending: dict[int, list[Candidate]],
                 remaining: dict[int, int], rows: ShardRows) -> None:  # fmt: skip
        """One batch's candidates; each identity whose candidates are all rendered is selected and encoded."""
        for k, (job, image) in enumerate(zip(batch, images)):
            drawn = None if draws is None else (float(draws.cosine[k]), float(draws.guidance[k]), int(draws.style[k]))
            pending.setdefault(job.identity, []).append(Candidate(job.identity, job.sample, job.seed, image, drawn))
            remaining[job.identity] -= 1
            if remaining[job.identity] == 0:
                self._emit(job.identity, pending.pop(job.identity), rows)

    def _emit(self, identity: int, candidates: list[Candidate], rows: ShardRows) -> None:
        tick = time.perf_counter()
        selected = self.selector.select(identity, candidates)
        self.add("select", time.perf_counter() - tick)
        tick = time.perf_counter()
        ext = IMAGE_EXT[self.fmt]
        for sel in selected:
            c = sel.candidate
            rows.add(
                encode_image(sel.image, self.fmt),
                f"{c.identity:07d}/{c.sample:04d}.{ext}",
                int(self.labels[c.identity]),
                c.identity,
                c.sample,
                c.seed,
                sel.id_score,
                sel.det_score,
                image_full=encode_image(c.image, self.fmt) if self.recipe.output.store_full_resolution else None,
                variation=c.variation,
            )
        self.kept += len(selected)
        self.add("encode", time.perf_counter() - tick)


def _part_summary(
    out: Path, part: str, ours: list[Shard], shards: list[Shard], guard_hash: str, per_process: list[dict[str, Any]]
) -> dict[str, Any]:
    """Process 0 of a part job after the barrier: its shards are all committed (a failure raised)."""
    return {
        "out": str(out),
        "part": part,
        "part_shards": len(ours),
        "shards": len(shards),
        "shards_written": sum(p["shards_written"] for p in per_process),
        "shards_skipped": sum(p["shards_skipped"] for p in per_process),
        "processes": len(per_process),
        "images_rendered": sum(p["images_rendered"] for p in per_process),
        "rows_written": sum(p["rows_written"] for p in per_process),
        "seconds": max((p["seconds"] for p in per_process), default=0.0),
        "config_hash": guard_hash,
        "timings": per_process[0]["timings"],
    }


def _finish(
    out: Path,
    recipe: GenerateRecipe,
    model: GeneratorModel,
    plan: IdentityPlan,
    shards: list[Shard],
    guard_hash: str,
    per_process: list[dict[str, Any]],
    resuming: bool,
    started: float,
    selector: Selector,
) -> dict[str, Any]:
    """Process 0 after the barrier: check every marker, write identities.parquet and summary.json."""
    data_dir = out / "data"
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
    rendered = sum(p["images_rendered"] for p in per_process)
    seconds = max((p["seconds"] for p in per_process), default=0.0)
    summary = {
        "out": str(out),
        "model": recipe.model,
        "family": model.family,
        "embedder": model.embedder,
        "identities_planned": len(plan),
        "identities_kept": int(kept.sum()),
        "images": rows,
        "shards": len(shards),
        "shards_written": sum(p["shards_written"] for p in per_process),
        "shards_skipped": sum(p["shards_skipped"] for p in per_process),
        "resumed": bool(resuming),
        "processes": len(per_process),
        "images_rendered": rendered,
        "images_per_second": rendered / seconds if seconds > 0 else None,
        "seconds": time.perf_counter() - started,
        "config_hash": guard_hash,
        # why config.yaml's header hash differs: it covers every key, this one the keys that decide the images
        "config_hash_covers": f"every recipe key but {', '.join(RESUME_FREE_KEYS)} (a resumed run may change them)",
        "config_yaml_hash": config_hash(config_dict(recipe)),
        "timings": per_process[0]["timings"],
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
    from synthface.dataset.card import write_card

    write_card(out, recipe, model, summary)
    return summary
