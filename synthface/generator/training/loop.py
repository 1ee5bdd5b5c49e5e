"""The native generator's training loop: DDPM epsilon loss, condition dropout, EMA, Accelerate, resume.

With ``train.identity_loss`` on, an identity term joins the denoising loss
(:mod:`synthface.generator.training.identity_loss`); it is logged in its own loss.csv column.

One optimizer step draws ``grad_accum`` micro-batches of ``batch_size`` images per process from a
seeded :class:`EpochSampler` (global batches, each process takes its own slice). Every random draw
of a step (augmentation, noise, timesteps, condition dropout) comes from a CPU generator seeded with
(seed, step, micro-batch, process), so a run resumed from a checkpoint (``accelerator.save_state``:
weights, optimizer, LR schedule, EMA, sampler position, RNG states) continues exactly where the
uninterrupted run would have been.

Run folder::

    RUN_DIR/config.yaml               resolved recipe (its hash guards --resume)
    RUN_DIR/checkpoints/step-NNNNNNN/ accelerate state + trainer.json (the last ``keep_checkpoints``)
    RUN_DIR/loss.csv, loss.png        loss curve (continues across resumes; + identity_loss with it on)
    RUN_DIR/identity_head/            the noise-aware identity head (`synthface train-head`), copied into model/
    RUN_DIR/samples/step-NNNNNNN.png  fixed identities x fixed seeds, EMA weights (first column: a real face)
    RUN_DIR/model/                    the EMA weights as a native model (`synthface generate --model RUN_DIR/model`)
    RUN_DIR/train.json                summary of the last run

Longer than most modules: the loop, its checkpoints and its resume are one piece of state (what a
checkpoint holds is exactly what the loop needs to continue), kept together so they cannot drift.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from synthface.atomic import writing_to
from synthface.config import TrainRecipe, config_dict, config_hash, diff_keys, read_resolved, write_resolved
from synthface.errors import ConfigError, InputError, WeightsError
from synthface.runtime import Progress, progress_or_null
from synthface.generator.training.data import FaceData, load_faces
from synthface.generator.training.report import LossLog, image_grid, plot_loss, save_png
from synthface.generator.training.sampler import EpochSampler

CHECKPOINT_PREFIX = "step-"
TRAINER_FILE = "trainer.json"
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


class Denoiser(nn.Module):
    """Projector + UNet as one trainable module: (noisy, t, prepared embeddings, drop_mask) -> prediction.

    Dropped rows get the projector's null tokens and, when the UNet has a class embedding, the
    unconditional class input (zeros: the training mean once centred), as the sampler's uncond branch.
    """

    def __init__(self, unet: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        self.unet = unet
        self.projector = projector

    def forward(
        self, noisy: torch.Tensor, timesteps: torch.Tensor, embeddings: torch.Tensor, drop_mask: torch.Tensor
    ) -> torch.Tensor:
        from synthface.generator.native import uses_class_embedding

        hidden = self.projector(embeddings, drop_mask)
        labels = None
        if uses_class_embedding(self.unet):
            keep = (~drop_mask.to(embeddings.device, torch.bool)).view(-1, 1)
            labels = embeddings * keep.to(embeddings.dtype)
        return self.unet(noisy, timesteps, encoder_hidden_states=hidden, class_labels=labels, return_dict=False)[0]


def loss_weights(scheduler: Any, timesteps: torch.Tensor, gamma: float | None) -> torch.Tensor | None:
    """Min-SNR-gamma weights per sample (None: plain MSE), for the scheduler's prediction type.

    epsilon: min(SNR, g) / SNR; v_prediction: min(SNR, g) / (SNR + 1) (the same weighting of x0 error).
    """
    if gamma is None:
        return None
    a = scheduler.alphas_cumprod.to(torch.float64)[timesteps]
    snr = a / (1.0 - a).clamp_min(1e-12)
    clipped = snr.clamp(max=gamma)
    if scheduler.config.prediction_type == "v_prediction":
        return (clipped / (snr + 1.0)).float()
    return (clipped / snr.clamp_min(1e-12)).float()


def training_target(scheduler: Any, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet learns to predict: the noise, or the velocity sqrt(a) noise - sqrt(1 - a) x0."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, timesteps)
    raise ConfigError(f"unsupported prediction_type '{kind}' for training: use epsilon or v_prediction")


@dataclass
class Batch:
    x0: torch.Tensor  # (B, C, H, W) clean images in [-1, 1] or latents
    cond: torch.Tensor  # (B, D) conditioning embeddings, as the model sees them (centred when it centres)
    target: torch.Tensor  # (B, D) the same embeddings uncentred: what the identity term pulls towards


def step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    """The CPU generator of one micro-batch: depends on (seed, step, micro, rank) only."""
    mixed = (seed * 0x9E3779B1 + step * 1_000_003 + micro * 7_919 + rank * 104_729) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)


def drop_mask(batch: int, rate: float, gen: torch.Generator) -> torch.Tensor:
    """Which rows lose their identity (the projector's null tokens stand in): Bernoulli(rate)."""
    return torch.rand(batch, generator=gen) < rate


def color_jitter(x: torch.Tensor, amount: float, gen: torch.Generator) -> torch.Tensor:
    """Small per-image brightness, contrast and saturation changes of images in [0, 1] (identity-preserving)."""
    b = x.shape[0]
    shape = (b, 1, 1, 1)

    def factor() -> torch.Tensor:
        return 1.0 + (torch.rand(shape, generator=gen) * 2 - 1) * amount

    x = x * factor()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * factor() + mean
    gray = 0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    x = (x - gray) * factor() + gray
    return x.clamp(0.0, 1.0)


def augment_pixels(images: torch.Tensor, augment: list[str], jitter: float, gen: torch.Generator) -> torch.Tensor:
    """uint8 (B, H, W, 3) crops -> float (B, 3, H, W) in [-1, 1] with flips and colour jitter."""
    x = images.permute(0, 3, 1, 2).float().div(255.0)
    flips = torch.rand(x.shape[0], generator=gen) < 0.5
    if "flip" in augment:
        x = torch.where(flips.view(-1, 1, 1, 1), x.flip(-1), x)
    if "color_jitter" in augment and jitter > 0:
        x = color_jitter(x, jitter, gen)
    return x * 2.0 - 1.0


# --------------------------------------------------------------------------- setup helpers


def _mixed_precision(name: str, device_type: str) -> str:
    if name != "auto":
        return name
    if device_type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def load_vae(spec: str, device: torch.device) -> Any:
    """The latent space: a folder holding the two TAEF2 files (taef2_encoder.pth, taef2_decoder.pth),
    or an AutoencoderKL / TinyAutoencoder save_pretrained folder (itself or its vae/ sub-folder), or a Hub id."""
    from diffusers import AutoencoderKL

    from synthface.generator.taef2 import is_taef2_folder, load_taef2, vae_class

    path = Path(spec).expanduser()
    if is_taef2_folder(path):
        return load_taef2(path).to(device).eval().requires_grad_(False)
    kwargs: dict[str, Any] = {}
    if path.is_dir() and (path / "vae").is_dir() and not (path / "config.json").is_file():
        kwargs["subfolder"] = "vae"
    cls = vae_class(path / kwargs.get("subfolder", "")) if path.is_dir() else AutoencoderKL
    try:
        vae = cls.from_pretrained(str(path) if path.exists() else spec, **kwargs)
    except Exception as exc:  # noqa: BLE001 - offline, bad repo id, wrong files ...
        raise WeightsError(
            f"cannot load the VAE '{spec}' ({type(exc).__name__}): pass a folder holding taef2_encoder.pth and "
            f"taef2_decoder.pth (madebyollin/taesd) or a local AutoencoderKL folder with --set model.vae=DIR, "
            f"or fetch it first (huggingface-cli download {spec})"
        ) from None
    return vae.to(device).eval().requires_grad_(False)


def encode_latents(vae: Any, crops: np.ndarray, batch_size: int, device: torch.device, progress: Progress) -> np.ndarray:
    """(N, 2, C, h, w) float16 latent means of each crop and its mirror, scaled as the sampler decodes them."""
    scale = float(getattr(vae.config, "scaling_factor", 1.0))
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
    out = None
    progress.start(len(crops), "encoding latents")
    for start in range(0, len(crops), batch_size):
        x = torch.from_numpy(crops[start : start + batch_size]).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        both = torch.cat([x, x.flip(-1)]).to(device, vae.dtype)
        with torch.no_grad():
            z = (vae.encode(both).latent_dist.mean.float() - shift) * scale
        n = len(x)
        z = torch.stack([z[:n], z[n:]], dim=1).cpu().half().numpy()
        if out is None:
            out = np.zeros((len(crops), *z.shape[1:]), np.float16)
        out[start : start + n] = z
        progress.advance(n)
    progress.finish()
    return out if out is not None else np.zeros((0,), np.float16)


def latent_cache(
    vae_spec: str, faces: FaceData, cache_dir: Path, vae: Any, batch_size: int, device: torch.device, progress: Progress
) -> np.ndarray:
    import hashlib

    from synthface.generator.training.data import _atomic_save_npy

    tag = hashlib.sha256(
        f"{faces.cache_key}|{vae_spec}|{json.dumps(dict(vae.config), sort_keys=True, default=str)}".encode()
    ).hexdigest()[:20]
    path = cache_dir / f"latents-{tag}.npy"
    if path.is_file():
        return np.load(path, mmap_mode="r")
    latents = encode_latents(vae, faces.crops, batch_size, device, progress)
    cache_dir.mkdir(parents=True, exist_ok=True)
    _atomic_save_npy(path, latents)
    return np.load(path, mmap_mode="r")


def latent_std(latents: np.ndarray, limit: int = 4096) -> float:
    """The standard deviation of cached latents (an evenly spaced subset of at most ``limit`` faces)."""
    idx = np.unique(np.linspace(0, len(latents) - 1, min(limit, len(latents))).round().astype(int))
    std = float(np.asarray(latents[idx], dtype=np.float32).std())
    if not np.isfinite(std) or std <= 0:
        raise InputError("the cached training latents are constant or not finite: delete the latent cache and retry")
    return std


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints (with trainer.json), oldest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and (p / TRAINER_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def sample_identities(faces: FaceData, count: int) -> list[int]:
    """The identities of the sample grids: those with the most images (ties by name), fixed for a run."""
    counts = np.bincount(faces.labels, minlength=faces.num_identities)
    order = sorted(range(faces.num_identities), key=lambda i: (-counts[i], faces.identities[i]))
    return order[: min(count, faces.num_identities)]


# --------------------------------------------------------------------------- the trainer


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
        found = checkpoints(self.run_dir)
        resolved = self.run_dir / "config.yaml"
        if not self.resume:
            if found or (self.run_dir / "model").exists():
                raise InputError(
                    f"{self.run_dir} already holds a training run: pass --resume to continue it or choose a new --out"
                )
            return
        if resolved.is_file():
            old = read_resolved(resolved)
            changed = [k for k in diff_keys(old, config_dict(self.config)) if k not in RESUMABLE_CHANGES]
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
        vae = load_vae(c.model.vae, device)
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

    def make_model(self, faces: FaceData, vae: Any) -> Any:
        """A freshly initialised native model (seeded by the recipe's seed) for these faces."""
        from synthface.generator.native import build_native

        c, m = self.config, self.config.model
        mean = None
        if m.center_condition:
            raw = faces.conditions(c.data.condition).astype(np.float64)
            mean = raw.mean(axis=0)
        sched = self.scheduler_config()
        return build_native(
            embedder=c.embedder,
            embedding_dim=int(faces.image_embeddings.shape[1]),
            image_size=c.model.image_size,
            block_out_channels=c.model.block_out_channels,
            id_tokens=c.model.id_tokens,
            token_dim=c.model.token_dim,
            layers_per_block=c.model.layers_per_block,
            attention_head_dim=c.model.attention_head_dim,
            norm_num_groups=c.model.norm_num_groups,
            vae=vae,
            template_scale=faces.template_scale,
            seed=c.seed,
            class_embedding=m.class_embedding,
            condition_mean=mean,
            scheduler_config=sched,
        )

    # ----------------------------------------------------------------- run

    def run(self, *, prepare_only: bool = False, stop_at_step: int | None = None) -> dict[str, Any]:
        """Train (or continue) to ``train.max_steps``; export the EMA model; return a summary dict.

        ``stop_at_step`` ends the run after that step as a crash would (no final checkpoint or export).
        """
        from accelerate import Accelerator
        from accelerate.utils import set_seed
        from diffusers import DDPMScheduler
        from diffusers.optimization import get_cosine_schedule_with_warmup
        from diffusers.training_utils import EMAModel

        from synthface.dataset.locks import RunLock

        c, t = self.config, self.config.train
        if c.model.latent and not c.model.vae:
            raise ConfigError(
                "model.latent is true but model.vae is empty: name a TAEF2 folder or an AutoencoderKL (Hub id or folder)"
            )
        self._check_head()
        wall0 = time.perf_counter()
        if t.threads:
            torch.set_num_threads(t.threads)
        cpu = t.device == "cpu" or (t.device == "auto" and not torch.cuda.is_available())
        probe = "cuda" if (not cpu and torch.cuda.is_available()) else "cpu"
        accelerator = Accelerator(mixed_precision=_mixed_precision(t.mixed_precision, probe), cpu=cpu)
        main = accelerator.is_main_process
        device = accelerator.device
        lock = RunLock(self.run_dir) if main else None
        with lock if lock is not None else contextlib.nullcontext():
            self._check_run_dir()
            set_seed(c.seed)
            with accelerator.main_process_first():
                faces = self.prepare_data(device)
                self._gallery = self._cache_dir() / f"faces-{faces.cache_key}.parquet"
                vae, latents, latent_gain = self.prepare_latents(faces, device)
            if main:
                write_resolved(c, self.run_dir)
            summary: dict[str, Any] = {"run_dir": str(self.run_dir), "data": faces.summary(), "config_hash": config_hash(c)}
            if prepare_only:
                summary["prepared_only"] = True
                return summary

            template_scale = faces.template_scale
            model = self.make_model(faces, vae)
            model.meta.extra = {"crop": c.model.crop, "trained_on": str(self.data_src), "condition": c.data.condition}
            if t.init_from:
                model.meta.extra["init_from"] = self._init_weights(model)
            denoiser = Denoiser(model.unet, model.projector)
            denoiser.train()
            noise_sched = DDPMScheduler.from_config(model.scheduler_config)
            optimizer = torch.optim.AdamW(denoiser.parameters(), lr=t.lr, weight_decay=t.weight_decay)
            lr_sched = get_cosine_schedule_with_warmup(optimizer, min(t.warmup_steps, t.max_steps), t.max_steps)
            ema = EMAModel(
                denoiser.parameters(),
                decay=t.ema_decay,
                use_ema_warmup=t.ema_warmup,
                power=t.ema_power,
            )
            sampler = EpochSampler(len(faces), c.seed)
            denoiser, optimizer = accelerator.prepare(denoiser, optimizer)
            ema.to(device)
            accelerator.register_for_checkpointing(lr_sched, ema, sampler)
            params = list(accelerator.unwrap_model(denoiser).parameters())

            log = LossLog(self.run_dir / "loss.csv", extra=("identity_loss",) if t.identity_loss.weight > 0 else ())
            start_step, seconds_before, cpu_before = 0, 0.0, 0.0
            found = checkpoints(self.run_dir)
            if self.resume and found:
                latest = found[-1]
                accelerator.load_state(str(latest))
                info = json.loads((latest / TRAINER_FILE).read_text(encoding="utf-8"))
                start_step, seconds_before = int(info["step"]), float(info.get("seconds", 0.0))
                cpu_before = float(info.get("cpu_seconds", 0.0))
                if main:
                    log.truncate(start_step)
                summary["resumed_from"] = str(latest)
            elif main and log.path.exists():
                log.path.unlink()
            accelerator.wait_for_everyone()

            from synthface.generator.native import prepare_condition

            raw_conds = torch.from_numpy(faces.conditions(c.data.condition))
            conds = prepare_condition(raw_conds, model.condition_mean)
            id_loss = self._identity_loss(model, noise_sched, device)
            crops = torch.from_numpy(faces.crops)
            world, rank = accelerator.num_processes, accelerator.process_index
            grid_ids = sample_identities(faces, t.sample_identities)
            n_params = sum(p.numel() for p in params)
            summary.update(
                {
                    "parameters": n_params,
                    "processes": world,
                    "device": str(device),
                    "mixed_precision": accelerator.mixed_precision,
                }
            )

            def batch(step: int, micro: int) -> tuple[Batch, torch.Generator]:
                gen = step_generator(c.seed, step, micro, rank)
                idx = sampler.take(t.batch_size * world)[rank::world]
                if latents is not None:
                    flips = (
                        (torch.rand(len(idx), generator=gen) < 0.5).long()
                        if "flip" in t.augment
                        else torch.zeros(len(idx), dtype=torch.long)
                    )
                    sel = np.asarray(latents[np.sort(idx.numpy())])  # memmap reads want sorted indices
                    order = np.argsort(np.argsort(idx.numpy()))
                    x0 = torch.from_numpy(sel[order]).float()[torch.arange(len(idx)), flips] * latent_gain
                else:
                    x0 = augment_pixels(crops[idx], t.augment, t.jitter, gen)
                return Batch(x0, conds[idx], raw_conds[idx]), gen

            self.progress.start(t.max_steps, "training")
            if start_step:
                self.progress.advance(start_step)
            window: list[float] = []
            last_loss = float("nan")
            t0, cpu0 = time.perf_counter(), time.process_time()
            step = start_step

            def cpu_spent() -> float:
                return cpu_before + time.process_time() - cpu0

            sampled_at = -1
            id_window: list[float] = []
            last_id = float("nan")
            while step < t.max_steps:
                losses = []
                id_sum = torch.zeros(2)  # (sum of the identity term over its rows, rows) of this step
                for micro in range(t.grad_accum):
                    b, gen = batch(step, micro)
                    noise = torch.randn(b.x0.shape, generator=gen)
                    steps_t = torch.randint(0, noise_sched.config.num_train_timesteps, (b.x0.shape[0],), generator=gen)
                    mask = drop_mask(b.x0.shape[0], t.cond_dropout, gen)
                    noisy = noise_sched.add_noise(b.x0, noise, steps_t)
                    target = training_target(noise_sched, b.x0, noise, steps_t)
                    weights = loss_weights(noise_sched, steps_t, t.snr_gamma)
                    sync = micro == t.grad_accum - 1
                    ctx = contextlib.nullcontext() if sync else accelerator.no_sync(denoiser)
                    with ctx:
                        with accelerator.autocast():
                            pred = denoiser(noisy.to(device), steps_t.to(device), b.cond.to(device), mask.to(device))
                        if weights is None:
                            loss = F.mse_loss(pred.float(), target.to(device).float())
                        else:
                            per = F.mse_loss(pred.float(), target.to(device).float(), reduction="none").mean(dim=(1, 2, 3))
                            loss = (per * weights.to(device)).mean()
                        total = loss
                        if id_loss is not None:
                            term, rows = id_loss(noisy.to(device), pred, steps_t.to(device), b.target, mask)
                            if term is not None:
                                total = loss + t.identity_loss.weight * term
                                id_sum += torch.tensor([float(term.detach()) * rows, rows])
                        accelerator.backward(total / t.grad_accum)
                    losses.append(loss.detach())
                if t.clip_grad_norm:
                    accelerator.clip_grad_norm_(denoiser.parameters(), t.clip_grad_norm)
                optimizer.step()
                lr_sched.step()
                optimizer.zero_grad(set_to_none=True)
                ema.step(params)
                step += 1
                step_loss = float(accelerator.gather(torch.stack(losses).mean().reshape(1)).mean())
                window.append(step_loss)
                last_loss = step_loss
                elapsed = time.perf_counter() - t0
                shown: dict[str, float] = {"loss": step_loss}
                if id_loss is not None:
                    total_id = accelerator.gather(id_sum.to(device).reshape(1, 2)).sum(dim=0)
                    if float(total_id[1]) > 0:
                        last_id = float(total_id[0] / total_id[1])
                        id_window.append(last_id)
                    shown["id_loss"] = last_id
                self.progress.advance(1, **shown, lr=lr_sched.get_last_lr()[0], steps_s=(step - start_step) / max(elapsed, 1e-9))
                if main and (step % t.log_every == 0 or step == t.max_steps):
                    epoch = step * t.batch_size * world * t.grad_accum / len(faces)
                    extra = (
                        {"identity_loss": float(np.mean(id_window)) if id_window else float("nan")} if id_loss is not None else {}
                    )
                    log.append(step, float(np.mean(window)), lr_sched.get_last_lr()[0], epoch, seconds_before + elapsed, **extra)
                    window, id_window = [], []
                if step % t.sample_every == 0 or step == t.max_steps:
                    if main:
                        self._sample_grid(accelerator, denoiser, ema, params, model, faces, grid_ids, step)
                        plot_loss(log.read(), self.run_dir / "loss.png")
                    sampled_at = step
                    accelerator.wait_for_everyone()
                if step % t.checkpoint_every == 0 and step < t.max_steps:
                    self._checkpoint(accelerator, step, seconds_before + time.perf_counter() - t0, config_hash(c), cpu_spent())
                if stop_at_step is not None and step >= stop_at_step:
                    summary.update({"steps": step, "stopped_at": step, "final_loss": last_loss})
                    self.progress.finish()
                    return summary
                if t.max_minutes is not None and main and seconds_before + time.perf_counter() - t0 > 60 * t.max_minutes:
                    accelerator.set_trigger()
                if t.max_cpu_minutes is not None and main and cpu_spent() > 60 * t.max_cpu_minutes:
                    accelerator.set_trigger()
                if accelerator.check_trigger():
                    summary["stopped_by_time_limit"] = True
                    break
            self.progress.finish()
            train_seconds = seconds_before + time.perf_counter() - t0
            latest = checkpoints(self.run_dir)
            if not latest or latest[-1].name != f"{CHECKPOINT_PREFIX}{step:07d}":
                self._checkpoint(accelerator, step, train_seconds, config_hash(c), cpu_spent())
            model_dir = None
            if main:
                if sampled_at != step:
                    self._sample_grid(accelerator, denoiser, ema, params, model, faces, grid_ids, step)
                    plot_loss(log.read(), self.run_dir / "loss.png")
                model_dir = self._export(accelerator, denoiser, ema, params, model, step)
            accelerator.wait_for_everyone()
            rows = log.read() if main else []
            summary.update(
                {
                    "steps": step,
                    "start_step": start_step,
                    "final_loss": last_loss if step > start_step else (rows[-1]["loss"] if rows else None),
                    "train_seconds": round(train_seconds, 1),
                    "train_cpu_seconds": round(cpu_spent(), 1),
                    "wall_seconds": round(time.perf_counter() - wall0, 1),
                    "model": str(model_dir) if model_dir else str(self.run_dir / "model"),
                    "loss_csv": str(log.path),
                    "loss_png": str(self.run_dir / "loss.png"),
                    "samples": str(self.run_dir / "samples"),
                    "template_scale": template_scale,
                }
            )
            if id_loss is not None:
                summary["final_identity_loss"] = last_id if step > start_step else None
            if main:
                (self.run_dir / "train.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
            return summary

    # ----------------------------------------------------------------- pieces

    def _checkpoint(self, accelerator: Any, step: int, seconds: float, chash: str, cpu_seconds: float = 0.0) -> None:
        root = self.run_dir / "checkpoints"
        final = root / f"{CHECKPOINT_PREFIX}{step:07d}"
        tmp = root / f".tmp-{CHECKPOINT_PREFIX}{step:07d}"
        if accelerator.is_main_process:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        with writing_to(tmp):
            accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            info = {"step": step, "seconds": round(seconds, 2), "cpu_seconds": round(cpu_seconds, 2), "config_hash": chash}
            (tmp / TRAINER_FILE).write_text(json.dumps(info) + "\n", encoding="utf-8")
            if final.exists():
                shutil.rmtree(final)
            tmp.replace(final)
            for old in checkpoints(self.run_dir)[: -self.config.train.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    @contextlib.contextmanager
    def _ema_weights(self, ema: Any, params: list[nn.Parameter]):
        ema.store(params)
        ema.copy_to(params)
        try:
            yield
        finally:
            ema.restore(params)

    def _init_weights(self, model: Any) -> dict[str, Any]:
        """``train.init_from``: copy that model's UNet, projector and conditioning centre into ``model``.

        Returns what the exported model records of its start (the folder as given and its UNet's sha256).
        A resumed run loads its checkpoint over these weights afterwards.
        """
        from synthface.generator.native import load_native

        src = Path(self.config.train.init_from or "")
        if not src.is_dir():
            raise InputError(
                f"train.init_from {src} is not a folder: name a native model folder (a run's RUN_DIR/model or a models/ folder)"
            )
        init = load_native(src)  # fp32: a shipped fp16 model is upcast
        if init.meta.embedder != self.config.embedder or init.meta.latent != self.config.model.latent:
            raise ConfigError(
                f"train.init_from {src} is a {'latent' if init.meta.latent else 'pixel'} {init.meta.embedder} model but the "
                f"recipe trains a {'latent' if self.config.model.latent else 'pixel'} {self.config.embedder} one: use its recipe"
            )
        for part in ("unet", "projector"):
            try:
                getattr(model, part).load_state_dict(getattr(init, part).state_dict(), strict=True)
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()[0][:160]
                raise ConfigError(
                    f"train.init_from {src}: its {part} does not match the recipe's model section ({first}); "
                    "train with the model section it was made with"
                ) from None
        mean = init.meta.condition_mean  # the weights learned this centring of the condition: keep it
        model.meta.condition_mean = mean
        model.condition_mean = torch.tensor(mean, dtype=torch.float32) if mean is not None else None
        unet_file = (init.meta.files or {}).get("unet/diffusion_pytorch_model.safetensors") or {}
        return {"path": str(self.config.train.init_from), "unet_sha256": unet_file.get("sha256")}

    def _check_head(self) -> None:
        """Before anything is written: ``train.identity_loss.through=head`` needs its head."""
        section = self.config.train.identity_loss
        where = self.head_dir()
        if section.weight > 0 and section.through == "head" and not (where / "config.json").is_file():
            raise ConfigError(
                f"train.identity_loss.through=head needs a trained identity head in {where}: run `synthface train-head` "
                "with the same --data, --recipe and --out first (or name one with train.identity_loss.head)"
            )

    def _identity_loss(self, model: Any, noise_sched: Any, device: torch.device) -> Any:
        """The identity term of ``train.identity_loss`` (None when its weight is 0), its guide frozen on ``device``."""
        from synthface.generator.training.identity_loss import IdentityLoss

        section = self.config.train.identity_loss
        if section.weight <= 0:
            return None
        if section.through == "head":
            from synthface.generator.identity_head import check_head, load_identity_head

            where = self.head_dir()
            guide = load_identity_head(where, device)
            check_head(guide, model, str(where))
        else:
            from synthface.generator.planning import identity_guide_for

            guide = identity_guide_for(model, device, embedder=self.embedder).to(device)
        return IdentityLoss(section, noise_sched, model, guide)

    def _view(self, accelerator: Any, denoiser: nn.Module, model: Any) -> Any:
        from synthface.generator.native import NativeGenerator

        inner = accelerator.unwrap_model(denoiser)
        return NativeGenerator(inner.unet, inner.projector, model.meta, model.scheduler_config, model.vae)

    def _sample_grid(self, accelerator, denoiser, ema, params, model, faces: FaceData, ids: list[int], step: int) -> Path:
        from synthface.generator.pipeline import generate

        t = self.config.train
        view = self._view(accelerator, denoiser, model)
        n_seeds = t.sample_seeds
        emb = np.repeat(faces.identity_embeddings[ids], n_seeds, axis=0)
        seeds = np.array([self.config.seed * 1000 + j for _ in ids for j in range(n_seeds)])
        was_training = denoiser.training
        denoiser.eval()
        options = {"scheduler": t.sample_scheduler, "steps": t.sample_steps}
        with torch.random.fork_rng(devices=[]), self._ema_weights(ema, params):
            images = generate(view, emb, seeds, batch_size=max(2, len(seeds)), guidance_scale=t.guidance_scale, **options)
            # the same seeds without identity: the last row of the grid, and the yardstick of how much the condition matters
            uncond = generate(
                view, None, seeds[:n_seeds], batch_size=max(2, n_seeds), guidance_scale=1.0, unconditional=True, **options
            )
        denoiser.train(was_training)
        self._log_condition_effect(step, images.reshape(len(ids), n_seeds, *images.shape[1:]), uncond)
        rows = []
        for k, ident in enumerate(ids):
            real = faces.crops[int(np.flatnonzero(faces.labels == ident)[0])]
            if real.shape[:2] != images.shape[1:3]:
                from PIL import Image

                real = np.asarray(Image.fromarray(real).resize(images.shape[1:3][::-1], Image.BICUBIC))
            rows.append([real] + list(images[k * n_seeds : (k + 1) * n_seeds]))
        rows.append([np.full_like(rows[0][0], 255)] + list(uncond))
        scale = max(1, 96 // images.shape[1])
        return save_png(image_grid(rows, scale=scale), self.run_dir / "samples" / f"step-{step:07d}.png")

    def _log_condition_effect(self, step: int, cond: np.ndarray, uncond: np.ndarray) -> None:
        """Append to samples/condition.csv how far renders of one seed move with the identity (0-255 units).

        ``cond_vs_uncond``: mean |conditional - unconditional| render of the same seed;
        ``between_identities``: mean |render of identity a - render of identity b| of the same seed.
        Both stay near 0 while the model ignores its condition.
        """
        c = cond.astype(np.float32)
        vs_uncond = float(np.abs(c - uncond.astype(np.float32)[None]).mean())
        between = float(np.abs(c[:, None] - c[None]).mean() * len(c) / max(len(c) - 1, 1)) if len(c) > 1 else 0.0
        path = self.run_dir / "samples" / "condition.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else ["step,cond_vs_uncond,between_identities"]
        lines = [ln for ln in lines if not ln.startswith(f"{step},")] + [f"{step},{vs_uncond:.3f},{between:.3f}"]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def _export(self, accelerator, denoiser, ema, params, model, step: int) -> Path:
        target = self.run_dir / "model"
        tmp = self.run_dir / ".tmp-model"
        if tmp.exists():
            shutil.rmtree(tmp)
        view = self._view(accelerator, denoiser, model)
        view.meta.extra = dict(model.meta.extra, train_steps=step)
        with self._ema_weights(ema, params), writing_to(tmp):
            view.save(tmp)
        from synthface.generator.native import GALLERY_FILE, seal

        if self._gallery is not None and self._gallery.is_file():
            shutil.copyfile(self._gallery, tmp / GALLERY_FILE)
        head = self.head_dir()
        if (head / "config.json").is_file():  # the run's identity head travels with its model (sampling.identity_guide=head)
            from synthface.generator.identity_head import HEAD_DIR

            shutil.copytree(head, tmp / HEAD_DIR)
        seal(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.replace(target)
        return target


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
    threads = torch.get_num_threads()
    try:
        return trainer.run(prepare_only=prepare_only, stop_at_step=stop_at_step)
    finally:
        torch.set_num_threads(threads)
