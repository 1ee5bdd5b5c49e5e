"""A whole `synthface generate` run: plan identities, render each shard, select, write; resumable.

:class:`GenerateRun` runs the stages, one method each: plan (the output folder, the model, the
identity plan) -> sample (the sampling loop, batch by batch) -> select (per identity: the seam
where filtering plugs in; with filtering off every sample is kept as generated) -> write (encode,
Parquet shard, then its commit marker) -> finish. Under ``accelerate launch`` every process runs
it: process 0 locks the output directory, checks/writes config.yaml and computes the identity
plan, the others receive its verdict and plan through a broadcast, each process writes its own
shards (shard % W == rank), and after a barrier process 0 writes identities.parquet and
summary.json. Every process returns a :class:`~synthface.generator.records.RunSummary`.

The stages' parts live in their own modules: the sampling loop of a shard in
:mod:`synthface.generator.render`, the select stage in :mod:`synthface.generator.selection`, the
output folder (config guard, inputs check, reset) in :mod:`synthface.generator.output`, the
identity plan in :mod:`synthface.generator.planning`, the records (part, summary.json) in
:mod:`synthface.generator.records`, process coordination in :mod:`synthface.generator.distributed`;
this module runs them. :class:`RunHooks` are the points where a caller (a test injecting a
crash) may act inside a run.

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
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from synthface.atomic import atomic_write_bytes, atomic_write_json
from synthface.config import GenerateRecipe, config_dict, config_hash, resume_guard
from synthface.dataset.card import write_card
from synthface.dataset.layout import CONFIG_FILE, DATA_DIR, IDENTITIES_FILE, SUMMARY_FILE
from synthface.dataset.locks import PartLock, RunLock
from synthface.dataset.plan import Shard, make_shards, shard_jobs, shards_for_process
from synthface.dataset.writer import IMAGE_EXT, ShardRows, encode_image, shard_done, table_bytes, write_shard
from synthface.errors import InputError
from synthface.generator.distributed import gather, on_main, process_state
from synthface.generator.families import check_model, load_model
from synthface.generator.fastpath import apply_fast_path
from synthface.generator.output import has_run_records, prepare_output, run_inputs
from synthface.generator.overlap import make_stage
from synthface.generator.records import RunSummary, dataset_record, finished_summary, part_record
from synthface.generator.render import ShardRenderer, StageClock
from synthface.generator.planning import identity_guide_for, identity_plan, with_model_leakage_gallery
from synthface.generator.selection import make_selector
from synthface.generator.variation import StyleBank
from synthface.identities import IdentityPlan, plan_labels
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


def _no_fault(shard: Shard) -> None:
    return None


@dataclass
class RunHooks:
    """Points inside a run where a caller may act; a hook that raises stops the run there, as a crash
    or a kill would (the resume tests inject their faults this way).

    ``before_write(shard)`` runs before each shard this process writes (its Parquet file, then its marker).
    """

    before_write: Callable[[Shard], None] = _no_fault


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
    hooks: RunHooks | None = None,
) -> dict[str, Any]:
    """Generate (or resume) the dataset of ``recipe`` into ``out``; returns the run summary
    (:meth:`RunSummary.as_dict`).

    Every process of an ``accelerate launch`` calls this; only process 0's summary covers the
    whole dataset. ``profile`` adds per-stage timings of the sampling loop (condition, unet,
    scheduler, decode) to the summary (it synchronises the GPU, so it is off by default).
    ``part="I/N"`` renders only the shards s with s % N == I and skips the final pass; process 0
    then returns a part summary (``part``, ``part_shards``: that many committed, ``shards``, ...).
    """
    run = GenerateRun(
        recipe, out, overwrite=overwrite, progress=progress, identity_guide=identity_guide,
        profile=profile, state=state, part=part, hooks=hooks,
    )  # fmt: skip
    return run.run().as_dict()


class GenerateRun:
    """One process's share of a ``generate`` run, one method per stage (docs/design.md, "A generate run").

    :meth:`plan` (the output folder, the model, the identity plan), :meth:`sample` (the sampling
    loop over this process's shards; it hands each identity's candidates to :meth:`select` and each
    shard's rows to :meth:`write`) and :meth:`finish` (after a barrier: the part record, or on a
    plain run the final pass, identities.parquet, summary.json and the card). :meth:`run` runs them
    with the output folder's lock held for the whole run.
    """

    def __init__(
        self,
        recipe: GenerateRecipe,
        out: str | Path,
        *,
        overwrite: bool = False,
        progress: Progress | None = None,
        identity_guide: Any = None,
        profile: bool = False,
        state: Any = None,
        part: str | None = None,
        hooks: RunHooks | None = None,
    ) -> None:
        self.index, self.parts = parse_part(part) if part is not None else (0, 1)
        if part is not None and overwrite:
            raise InputError(
                "--overwrite cannot be combined with --part (it would delete the other parts' shards): "
                "delete --out, or run once with --overwrite and no --part"
            )
        self.recipe, self.out, self.overwrite, self.part = recipe, Path(out), overwrite, part
        self.state = state or process_state()
        self.progress = progress_or_null(progress)
        self.identity_guide, self.profile = identity_guide, profile
        self.hooks = hooks or RunHooks()
        self.guard = resume_guard(config_dict(recipe))
        self.guard_hash = config_hash(self.guard)
        self.data_dir = self.out / DATA_DIR
        self.timings: dict[str, float] = {}  # load, plan, verify (+ the sampling loop's parts with profile)
        self.stage_seconds = StageClock()  # render, select, encode, write: from the sampling and the writing thread
        self.started = time.perf_counter()
        self.kept = 0  # images selected so far (the progress display)
        self.rendered = 0
        self.rows_written = 0
        self._held = ExitStack()

    # ----------------------------------------------------------------------- the stages in order

    def run(self) -> RunSummary:
        """Every stage; a finished run of this config is only reported again (no model is loaded)."""
        with self._held:
            # every input is checked before --out is created or changed: the folder, the model, the plan
            on_main(self.state, self.check_folder)
            finished = on_main(self.state, self.finished)  # every shard and the final pass are there
            if finished is not None:
                return finished if self.state.is_main_process else RunSummary(rank=self.state.process_index)
            self.plan()
            return self.finish(self.sample())

    def plan(self) -> None:
        """Load the model, plan (or reuse) the identities, then lock the folder and check, reset or resume it."""
        recipe, state = self.recipe, self.state
        tick = time.perf_counter()
        device = state.device
        model = load_model(
            recipe.model, device, resolve_dtype(recipe.sampling.dtype, device), options={"arc2face": recipe.arc2face.model_dump()}
        )
        check_model(model, embedder=recipe.identities.embedder)
        sampling = recipe.sampling
        apply_fast_path(model, channels_last=sampling.channels_last, compile=sampling.compile, vae_tiling=sampling.vae_tiling)
        self.timings["load"] = time.perf_counter() - tick
        tick = time.perf_counter()
        identities: IdentityPlan = on_main(
            state, lambda: identity_plan(recipe, model, self.out, self.guard_hash, device, not self.overwrite)
        )
        check_model(model, dim=identities.dim)
        self.timings["plan"] = time.perf_counter() - tick
        guide = self.identity_guide
        if sampling.identity_scale > 0 and guide is None:
            guide = identity_guide_for(model, device, sampling.identity_guide)
        # the recipe as written stays the run's config (resume compares it); only the filter sees the model's gallery
        self.selector: Selector = make_selector(with_model_leakage_gallery(recipe, model), model, identities)
        bank = StyleBank(recipe.variation.style_bank, model.image_size) if recipe.variation.style_bank else None
        self.model, self.identities = model, identities
        self.resuming: bool = on_main(state, self.prepare_folder)
        self.renderer = ShardRenderer(
            recipe, model, identities, guide, self.stage_seconds, self.timings if self.profile else None, bank
        )
        self.labels = plan_labels(identities.kept)
        self.shards = make_shards(len(identities), recipe.shard_identities)
        self.ours = shards_for_process(self.shards, self.index, self.parts)  # this part's shards: all of them without --part
        self.mine = self.ours[state.process_index :: state.num_processes]
        tick = time.perf_counter()
        self.todo = [shard for shard in self.mine if shard_done(self.data_dir, shard, self.guard_hash) is None]
        self.timings["verify"] = time.perf_counter() - tick

    def sample(self) -> RunSummary:
        """Render this process's shards left to do; selection, encoding and writing follow in order,
        behind the sampler when ``sampling.overlap`` is on (overlap.py). Returns this process's counts."""
        per_identity = self.selector.candidates_per_identity(self.recipe.images_per_identity)
        kept = self.identities.kept
        total = sum(int(kept[shard.start : shard.stop].sum()) for shard in self.todo) * per_identity
        self.progress.start(total, "generating")
        self.render_start = time.perf_counter()
        with make_stage(self.recipe.sampling.overlap) as stage:
            for shard in self.todo:
                jobs = shard_jobs(shard, self.identities, self.recipe.seed, per_identity)
                rows = self.renderer.render(jobs, stage, select=self.select, advance=self.advance)
                stage.submit(self.write, shard, rows)
        render_seconds = time.perf_counter() - self.render_start
        self.progress.finish()
        for key, value in self.stage_seconds.items():
            self.timings[key] = self.timings.get(key, 0.0) + value
        return RunSummary(
            rank=self.state.process_index,
            shards_written=len(self.todo),
            shards_skipped=len(self.mine) - len(self.todo),
            images_rendered=self.rendered,
            rows_written=self.rows_written,
            seconds=render_seconds,
            timings=self.timings,
        )

    def select(self, identity: int, candidates: list[Candidate], rows: ShardRows) -> None:
        """One identity's candidates, all rendered: the selector keeps some, their rows are encoded into ``rows``."""
        tick = time.perf_counter()
        selected = self.selector.select(identity, candidates)
        self.stage_seconds.add("select", time.perf_counter() - tick)
        tick = time.perf_counter()
        fmt = self.recipe.output.image_format
        full = self.recipe.output.store_full_resolution
        for chosen in selected:
            candidate = chosen.candidate
            rows.add(
                image=encode_image(chosen.image, fmt),
                path=f"{candidate.identity:07d}/{candidate.sample:04d}.{IMAGE_EXT[fmt]}",
                label=int(self.labels[candidate.identity]),
                identity=candidate.identity,
                sample=candidate.sample,
                seed=candidate.seed,
                id_score=chosen.id_score,
                det_score=chosen.det_score,
                image_full=encode_image(candidate.image, fmt) if full else None,
                variation=candidate.variation,
            )
        self.kept += len(selected)
        self.stage_seconds.add("encode", time.perf_counter() - tick)

    def write(self, shard: Shard, rows: ShardRows) -> None:
        """Commit one shard: a selector's per-shard record (filtering), the Parquet file, then its marker."""
        self.hooks.before_write(shard)
        tick = time.perf_counter()
        write_shard(self.data_dir, shard, rows, self.guard_hash, self.selector.shard_extra(self.out, shard))
        self.stage_seconds.add("write", time.perf_counter() - tick)
        self.rows_written += len(rows)

    def finish(self, work: RunSummary) -> RunSummary:
        """After a barrier, process 0 records the run: a part job's record, or the dataset's final pass and summary."""
        state = self.state
        state.wait_for_everyone()
        per_process = gather(state, work)
        if state.is_main_process and self.part is not None:
            work.record = part_record(
                self.out, f"{self.index}/{self.parts}", self.ours, self.shards, self.guard_hash, per_process
            )
        elif state.is_main_process:
            work.record = self.final_pass(per_process)
        state.wait_for_everyone()
        return work

    # ----------------------------------------------------------------------- parts of the stages

    def check_folder(self) -> None:
        check_output_folder(self.out, "generate", CONFIG_FILE, GenerateRecipe, records=has_run_records)

    def finished(self) -> RunSummary | None:
        """Process 0: a finished run of this config in ``out`` is reported again, its summary.json
        rewritten with this call's counts; None when anything is left to do."""
        if self.overwrite or self.part is not None:
            return None
        record = finished_summary(self.out, self.recipe, self.guard_hash)
        if record is None:
            return None
        self._held.enter_context(RunLock(self.out))  # no other run may be writing the folder whose summary is rewritten
        seconds = time.perf_counter() - self.started
        record.update({"resumed": True, "shards_written": 0, "shards_skipped": record["shards"], "images_rendered": 0,
                       "images_per_second": None, "seconds": seconds})  # fmt: skip
        if isinstance(record.get("filter"), dict):
            record["filter"]["shards_relabelled"] = 0  # the final pass did not run again
        atomic_write_json(self.out / SUMMARY_FILE, record)
        return RunSummary(rank=self.state.process_index, shards_skipped=record["shards"], seconds=seconds, record=record)

    def prepare_folder(self) -> bool:
        """Process 0: lock ``out`` for the rest of the run, check (or reset) it; True when resuming."""
        inputs = run_inputs(self.recipe, self.model, self.identities)
        lock = RunLock(self.out) if self.part is None else PartLock(self.out, self.index, self.parts)
        self._held.enter_context(lock)
        resuming = prepare_output(self.out, self.recipe, self.guard, self.overwrite, self.part is not None, inputs)
        if self.part is None:
            table = self.identities.to_table({"config_hash": self.guard_hash})
            atomic_write_bytes(self.out / IDENTITIES_FILE, table_bytes(table))
        return resuming

    def advance(self, n: int) -> None:
        """``n`` more images rendered: the progress display."""
        self.rendered += n
        elapsed = max(time.perf_counter() - self.render_start, 1e-9)
        if self.recipe.filter.enabled:  # with the filter off every image is kept: no count to show
            self.progress.advance(n, ips=self.rendered / elapsed, accepted=self.kept)
        else:
            self.progress.advance(n, ips=self.rendered / elapsed)

    def final_pass(self, per_process: list[RunSummary]) -> dict[str, Any]:
        """Process 0 of a plain run: the selector's final pass, identities.parquet, summary.json and the card."""
        record = dataset_record(
            self.out, self.recipe, self.model, self.identities, self.shards, self.guard_hash,
            per_process, self.resuming, self.started, self.selector,
        )  # fmt: skip
        write_card(self.out, self.recipe, self.model, record)
        return record
