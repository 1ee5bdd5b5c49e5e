"""The native generator's training loop: DDPM epsilon loss, condition dropout, EMA, Accelerate, resume.

With ``train.identity_loss`` on, an identity term joins the denoising loss
(:mod:`synthface.generator.training.identity_loss`); it is logged in its own loss.csv column.

One optimizer step draws ``grad_accum`` micro-batches of ``batch_size`` images per process from a
seeded :class:`~synthface.training.EpochSampler` (global batches, each process takes its own slice).
Every random draw of a step comes from a CPU generator seeded with (seed, step, micro-batch, process)
(:mod:`synthface.generator.training.objective`), so a run resumed from a checkpoint
(``accelerator.save_state``: weights, optimizer, LR schedule, EMA, sampler position, RNG states)
continues exactly where the uninterrupted run would have been.

A run is set up once (:meth:`Trainer.setup` -> :class:`TrainState`), then advanced one optimizer step at
a time (:meth:`Trainer.step`); after each step the hooks run in order: the loss log, the sample grid,
the checkpoint (:meth:`Trainer.after_step`). The epoch order, precision rule, resume check and thread
count are those of :mod:`synthface.training`, shared with the recognizer's trainer.

Run folder::

    RUN_DIR/config.yaml               resolved recipe (its hash guards --resume)
    RUN_DIR/checkpoints/step-NNNNNNN/ accelerate state + trainer.json (the last ``keep_checkpoints``)
    RUN_DIR/loss.csv, loss.png        loss curve (continues across resumes; + identity_loss with it on)
    RUN_DIR/identity_head/            the noise-aware identity head (`synthface train-head`), copied into model/
    RUN_DIR/samples/step-NNNNNNN.png  fixed identities x fixed seeds, EMA weights (first column: a real face)
    RUN_DIR/model/                    the EMA weights as a native model (`synthface generate --model RUN_DIR/model`)
    RUN_DIR/train.json                summary of the last run
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthface.atomic import atomic_write_text
from synthface.config import TrainRecipe, config_dict, config_hash, read_resolved, write_resolved
from synthface.errors import ConfigError
from synthface.generator.training.checkpoints import (
    CHECKPOINT_PREFIX,
    checkpoints,
    export_model,
    read_trainer_info,
    save_checkpoint,
)
from synthface.generator.training.data import FaceData, load_faces
from synthface.generator.training.identity_loss import check_identity_head, identity_loss_for
from synthface.generator.training.init import check_init_from, init_weights
from synthface.generator.training.latents import latent_cache, latent_std, load_vae
from synthface.generator.training.objective import (
    Denoiser,
)
from synthface.generator.training.report import LossLog, plot_loss
from synthface.generator.training.samples import sample_grid, sample_identities
from synthface.generator.training.state import TrainState
from synthface.generator.training.steps import micro_step
from synthface.runtime import Progress, progress_or_null
from synthface.training import EpochSampler, check_resume, recipe_changes, resolve_precision, torch_threads

# keys that may change between a run and its --resume without changing what is trained
RESUMABLE_CHANGES = {
    "train.checkpoint_every",
    "train.sample_every",
    "train.log_every",
    "train.keep_checkpoints",
    "train.sample_identities",
    "train.sample_seeds",
    "train.sample_steps",
    "train.sample_scheduler",
    "train.guidance_scale",
    "train.threads",
    "train.max_minutes",
    "train.max_cpu_minutes",
    "train.max_steps",  # may only grow: extending a run (the cosine lr schedule stretches to the new length)
    "train.device",
    "data.workers",
    "data.batch_size",
    "data.cache",
}


class Trainer:
    """Holds the model, optimizer, EMA, data and run folder of one `synthface train` run."""

    def __init__(
        self,
        config: TrainRecipe,
        data: str | Path,
        run_dir: str | Path,
        *,
        resume: bool = False,
        progress: Progress | None = None,
        embedder: Any = None,
    ) -> None:
        self.config = config
        self.data_src = Path(data)
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.progress = progress_or_null(progress)
        self.embedder = embedder
        self._gallery: Path | None = None  # the cached embeddings table, exported with the model

    # ----------------------------------------------------------------- preparation

    def _check_run_dir(self) -> None:
        holds_run = bool(checkpoints(self.run_dir)) or (self.run_dir / "model").exists()
        check_resume(self.run_dir, holds_run, self.resume)
        resolved = self.run_dir / "config.yaml"
        if not self.resume or not resolved.is_file():
            return
        old = read_resolved(resolved)
        changed = recipe_changes(old, config_dict(self.config), RESUMABLE_CHANGES)
        before = int((old.get("train") or {}).get("max_steps") or 0)
        if self.config.train.max_steps < before:
            raise ConfigError(
                f"--resume can extend a run but not shorten it: train.max_steps {self.config.train.max_steps} < "
                f"{before} (the run's own); pass train.max_steps={before} or more"
            )
        if changed:
            raise ConfigError(
                f"--resume with a different recipe ({', '.join(changed[:5])} changed): use the run's own "
                f"recipe ({resolved}) or start a new --out"
            )

    def _cache_dir(self) -> Path:
        return Path(self.config.data.cache) if self.config.data.cache else self.run_dir / "cache"

    def prepare_data(self, device: torch.device) -> FaceData:
        c = self.config
        people = None
        if c.data.people:
            from synthface.dataset.reader import read_people

            people = read_people(c.data.people)
        cache = self._cache_dir()
        return load_faces(
            self.data_src,
            c.embedder,
            image_size=c.model.image_size,
            crop=c.model.crop,
            model_scale=c.model.template_scale,
            form=c.data.form,
            data_scale=c.data.template_scale,
            people=people,
            min_images=c.data.min_images,
            cache_dir=cache,
            batch_size=c.data.batch_size,
            workers=c.data.workers,
            device=str(device),
            embedder=self.embedder,
            progress=self.progress,
            embed_per_identity=c.data.embed_per_identity,
        )

    def scheduler_config(self) -> dict[str, Any]:
        """The noise schedule of the recipe's model (what training noises with and the model samples with)."""
        from synthface.generator.native import default_scheduler_config

        m = self.config.model
        return default_scheduler_config(m.latent, m.prediction_type, m.beta_schedule, m.zero_terminal_snr, m.timestep_spacing)

    def prepare_latents(self, faces: FaceData, device: torch.device) -> tuple[Any, np.ndarray | None, float]:
        """(VAE, cached latents, gain) of a latent model, (None, None, 1.0) in pixel space.

        With ``model.latent_scaling: auto`` the latents are multiplied by ``gain`` (1 / their std) and
        the VAE's scaling factor records it, so the model decodes what it was trained on.
        """
        c = self.config
        if not c.model.latent:
            return None, None, 1.0
        vae = load_vae(str(c.model.vae), device)  # run() refused a latent model without one
        latents = latent_cache(str(c.model.vae), faces, self._cache_dir(), vae, c.data.batch_size, device, self.progress)
        gain = 1.0
        if c.model.latent_scaling == "auto":
            gain = 1.0 / latent_std(latents)
            vae.register_to_config(scaling_factor=float(getattr(vae.config, "scaling_factor", 1.0)) * gain)
        return vae, latents, gain

    def head_dir(self) -> Path:
        """Where this run's identity head lives: ``train.identity_loss.head``, else RUN_DIR/identity_head."""
        from synthface.generator.identity_head import HEAD_DIR

        named = self.config.train.identity_loss.head
        return Path(named) if named else self.run_dir / HEAD_DIR

    def _init_weights(self, model: Any) -> dict[str, Any]:
        """``train.init_from`` copied into ``model``; what the export records of it (:func:`.init.init_weights`)."""
        return init_weights(model, self.config)

    def make_model(self, faces: FaceData, vae: Any) -> Any:
        """A freshly initialised native model (seeded by the recipe's seed) for these faces."""
        from synthface.generator.native import build_native

        c = self.config
        mean = None
        if c.model.center_condition:
            raw = faces.conditions(c.data.condition).astype(np.float64)
            mean = raw.mean(axis=0)
        return build_native(
            c.embedder,
            int(faces.image_embeddings.shape[1]),
            c.model,
            vae=vae,
            template_scale=faces.template_scale,
            seed=c.seed,
            condition_mean=mean,
            scheduler_config=self.scheduler_config(),
        )

    # ----------------------------------------------------------------- run

    def run(self, *, prepare_only: bool = False, stop_at_step: int | None = None) -> dict[str, Any]:
        """Train (or continue) to ``train.max_steps``; export the EMA model; return a summary dict.

        ``stop_at_step`` ends the run after that step as a crash would (no final checkpoint or export).
        torch's thread count is ``train.threads`` during the run and what it was before after it.
        """
        from accelerate.utils import set_seed

        from synthface.dataset.locks import RunLock

        c, t = self.config, self.config.train
        if c.model.latent and not c.model.vae:
            raise ConfigError(
                "model.latent is true but model.vae is empty: name a TAEF2 folder or an AutoencoderKL (Hub id or folder)"
            )
        if not prepare_only:  # the documented order is prepare-only, train-head, train: the caches come first
            check_identity_head(c, self.head_dir())
            check_init_from(c)
        wall0 = time.perf_counter()
        with torch_threads(t.threads):
            accelerator = self._accelerator()
            lock = RunLock(self.run_dir) if accelerator.is_main_process else None
            with lock if lock is not None else contextlib.nullcontext():
                self._check_run_dir()
                set_seed(c.seed)
                with accelerator.main_process_first():
                    faces = self.prepare_data(accelerator.device)
                    self._gallery = self._cache_dir() / f"faces-{faces.cache_key}.parquet"
                    vae, latents, latent_gain = self.prepare_latents(faces, accelerator.device)
                if accelerator.is_main_process:
                    write_resolved(c, self.run_dir)
                summary: dict[str, Any] = {"run_dir": str(self.run_dir), "data": faces.summary(), "config_hash": config_hash(c)}
                if prepare_only:
                    summary["prepared_only"] = True
                    return summary
                state = self.setup(accelerator, faces, vae, latents, latent_gain, summary)
                return self._train(state, wall0, stop_at_step)

    def _accelerator(self) -> Any:
        from accelerate import Accelerator

        t = self.config.train
        cpu = t.device == "cpu" or (t.device == "auto" and not torch.cuda.is_available())
        probe = "cuda" if (not cpu and torch.cuda.is_available()) else "cpu"
        return Accelerator(mixed_precision=resolve_precision(t.mixed_precision, probe), cpu=cpu)

    def setup(
        self, accelerator: Any, faces: FaceData, vae: Any, latents: np.ndarray | None, latent_gain: float, summary: dict[str, Any]
    ) -> TrainState:
        """The model, optimizer, LR schedule, EMA and sampler of a run, restored from its latest checkpoint on --resume."""
        from diffusers import DDPMScheduler
        from diffusers.optimization import get_cosine_schedule_with_warmup
        from diffusers.training_utils import EMAModel

        c, t = self.config, self.config.train
        model = self.make_model(faces, vae)
        model.meta.extra = {"crop": c.model.crop, "trained_on": str(self.data_src), "condition": c.data.condition}
        if t.init_from:
            model.meta.extra["init_from"] = self._init_weights(model)
        denoiser = Denoiser(model.unet, model.projector)
        denoiser.train()
        noise_sched = DDPMScheduler.from_config(model.scheduler_config)
        optimizer = torch.optim.AdamW(denoiser.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        lr_sched = get_cosine_schedule_with_warmup(optimizer, min(t.warmup_steps, t.max_steps), t.max_steps)
        ema = EMAModel(denoiser.parameters(), decay=t.ema_decay, use_ema_warmup=t.ema_warmup, power=t.ema_power)
        sampler = EpochSampler(len(faces), c.seed)
        denoiser, optimizer = accelerator.prepare(denoiser, optimizer)
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(lr_sched, ema, sampler)
        log = LossLog(self.run_dir / "loss.csv", extra=("identity_loss",) if t.identity_loss.weight > 0 else ())
        state = TrainState(
            accelerator=accelerator, model=model, denoiser=denoiser, optimizer=optimizer, lr_sched=lr_sched, ema=ema,
            sampler=sampler, noise_sched=noise_sched, faces=faces, latents=latents, latent_gain=latent_gain, log=log,
            summary=summary,
        )  # fmt: skip
        state.params = list(accelerator.unwrap_model(denoiser).parameters())
        self._resume(state)

        from synthface.generator.native import prepare_condition

        state.raw_conds = torch.from_numpy(faces.conditions(c.data.condition))
        state.conds = prepare_condition(state.raw_conds, model.condition_mean)
        state.id_loss = identity_loss_for(c, self.head_dir(), model, noise_sched, accelerator.device, self.embedder)
        state.crops = torch.from_numpy(faces.crops)
        state.grid_ids = sample_identities(faces, t.sample_identities)
        summary.update(
            {
                "parameters": sum(p.numel() for p in state.params),
                "processes": state.world,
                "device": str(state.device),
                "mixed_precision": accelerator.mixed_precision,
            }
        )
        return state

    def _resume(self, state: TrainState) -> None:
        """Load the latest checkpoint into ``state`` on --resume (and cut loss.csv back to it); else start loss.csv afresh."""
        found = checkpoints(self.run_dir)
        if self.resume and found:
            latest = found[-1]
            state.accelerator.load_state(str(latest))
            info = read_trainer_info(latest)
            state.start_step, state.seconds_before = int(info["step"]), float(info.get("seconds", 0.0))
            state.cpu_before = float(info.get("cpu_seconds", 0.0))
            if state.main:
                state.log.truncate(state.start_step)
            state.summary["resumed_from"] = str(latest)
        elif state.main and state.log.path.exists():
            state.log.path.unlink()
        state.step = state.start_step
        state.accelerator.wait_for_everyone()

    def _train(self, state: TrainState, wall0: float, stop_at_step: int | None) -> dict[str, Any]:
        t = self.config.train
        self.progress.start(t.max_steps, "training")
        if state.start_step:
            self.progress.advance(state.start_step)
        state.start_clock()
        while state.step < t.max_steps:
            self.step(state)
            self.after_step(state)
            if stop_at_step is not None and state.step >= stop_at_step:
                state.summary.update({"steps": state.step, "stopped_at": state.step, "final_loss": state.last_loss})
                self.progress.finish()
                return state.summary
            if self._out_of_time(state):
                state.summary["stopped_by_time_limit"] = True
                break
        self.progress.finish()
        return self._finish(state, wall0)

    def step(self, state: TrainState) -> None:
        """One optimizer step (``grad_accum`` micro-batches), the EMA update, and the step's losses in ``state``."""
        t, accelerator = self.config.train, state.accelerator
        id_sum = torch.zeros(2)  # (sum of the identity term over its rows, rows) of this step
        losses = [micro_step(state, self.config, micro, id_sum) for micro in range(t.grad_accum)]
        if t.clip_grad_norm:
            accelerator.clip_grad_norm_(state.denoiser.parameters(), t.clip_grad_norm)
        state.optimizer.step()
        state.lr_sched.step()
        state.optimizer.zero_grad(set_to_none=True)
        state.ema.step(state.params)
        state.step += 1
        step_loss = float(accelerator.gather(torch.stack(losses).mean().reshape(1)).mean())
        state.window.append(step_loss)
        state.last_loss = step_loss
        shown: dict[str, float] = {"loss": step_loss}
        if state.id_loss is not None:
            total_id = accelerator.gather(id_sum.to(state.device).reshape(1, 2)).sum(dim=0)
            if float(total_id[1]) > 0:
                state.last_id = float(total_id[0] / total_id[1])
                state.id_window.append(state.last_id)
            shown["id_loss"] = state.last_id
        elapsed = time.perf_counter() - state.t0
        steps_s = (state.step - state.start_step) / max(elapsed, 1e-9)
        self.progress.advance(1, **shown, lr=state.lr_sched.get_last_lr()[0], steps_s=steps_s)

    # ----------------------------------------------------------------- hooks after each step

    def after_step(self, state: TrainState) -> None:
        """The hooks of a step, in order: the loss log, the sample grid, the checkpoint."""
        for hook in (self._log_hook, self._sample_hook, self._checkpoint_hook):
            hook(state)

    def _log_hook(self, state: TrainState) -> None:
        t = self.config.train
        if not state.main or (state.step % t.log_every and state.step != t.max_steps):
            return
        epoch = state.step * t.batch_size * state.world * t.grad_accum / len(state.faces)
        extra = {}
        if state.id_loss is not None:
            extra["identity_loss"] = float(np.mean(state.id_window)) if state.id_window else float("nan")
        lr = state.lr_sched.get_last_lr()[0]
        state.log.append(state.step, float(np.mean(state.window)), lr, epoch, state.seconds(), **extra)
        state.window, state.id_window = [], []

    def _sample_hook(self, state: TrainState) -> None:
        t = self.config.train
        if state.step % t.sample_every and state.step != t.max_steps:
            return
        if state.main:
            self._samples(state)
        state.sampled_at = state.step
        state.accelerator.wait_for_everyone()

    def _checkpoint_hook(self, state: TrainState) -> None:
        t = self.config.train
        if state.step % t.checkpoint_every == 0 and state.step < t.max_steps:
            self._checkpoint(state)

    def _samples(self, state: TrainState) -> None:
        sample_grid(state, self.config, self.run_dir)
        plot_loss(state.log.read(), self.run_dir / "loss.png")

    def _checkpoint(self, state: TrainState, seconds: float | None = None) -> None:
        info = {
            "step": state.step,
            "seconds": round(state.seconds() if seconds is None else seconds, 2),
            "cpu_seconds": round(state.cpu_spent(), 2),
            "config_hash": config_hash(self.config),
        }
        save_checkpoint(state, self.run_dir, self.config.train.keep_checkpoints, info)

    def _out_of_time(self, state: TrainState) -> bool:
        """``train.max_minutes`` / ``train.max_cpu_minutes`` spent (the main process decides for all)."""
        t, accelerator = self.config.train, state.accelerator
        if t.max_minutes is not None and state.main and state.seconds() > 60 * t.max_minutes:
            accelerator.set_trigger()
        if t.max_cpu_minutes is not None and state.main and state.cpu_spent() > 60 * t.max_cpu_minutes:
            accelerator.set_trigger()
        return bool(accelerator.check_trigger())

    def _finish(self, state: TrainState, wall0: float) -> dict[str, Any]:
        """The last checkpoint, sample grid and model export, and train.json."""
        train_seconds = state.seconds()
        step, start_step = state.step, state.start_step
        latest = checkpoints(self.run_dir)
        if not latest or latest[-1].name != f"{CHECKPOINT_PREFIX}{step:07d}":
            self._checkpoint(state, train_seconds)
        model_dir = None
        if state.main:
            if state.sampled_at != step:
                self._samples(state)
            model_dir = export_model(state, self.run_dir, self._gallery, self.head_dir())
        state.accelerator.wait_for_everyone()
        rows = state.log.read() if state.main else []
        summary = state.summary
        summary.update(
            {
                "steps": step,
                "start_step": start_step,
                "final_loss": state.last_loss if step > start_step else (rows[-1]["loss"] if rows else None),
                "train_seconds": round(train_seconds, 1),
                "train_cpu_seconds": round(state.cpu_spent(), 1),
                "wall_seconds": round(time.perf_counter() - wall0, 1),
                "model": str(model_dir) if model_dir else str(self.run_dir / "model"),
                "loss_csv": str(state.log.path),
                "loss_png": str(self.run_dir / "loss.png"),
                "samples": str(self.run_dir / "samples"),
                "template_scale": state.faces.template_scale,
            }
        )
        if state.id_loss is not None:
            summary["final_identity_loss"] = state.last_id if step > start_step else None
        if state.main:
            atomic_write_text(self.run_dir / "train.json", json.dumps(summary, indent=2, default=str) + "\n")
        return summary


def train_generator(
    config: TrainRecipe,
    data: str | Path,
    run_dir: str | Path,
    *,
    resume: bool = False,
    prepare_only: bool = False,
    progress: Progress | None = None,
    embedder: Any = None,
    stop_at_step: int | None = None,
) -> dict[str, Any]:
    """Train synthface's native generator on real faces; see the module docstring for the run folder."""
    trainer = Trainer(config, data, run_dir, resume=resume, progress=progress, embedder=embedder)
    return trainer.run(prepare_only=prepare_only, stop_at_step=stop_at_step)
