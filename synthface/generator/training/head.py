"""`synthface train-head`: distil a noise-aware identity head from a training run's cache.

The head (:class:`synthface.generator.identity_head.IdentityHead`) learns to read the embedding of
the clean face from its noisy sample: each step draws training images (and, for latent models,
the cached latent of the image or of its mirror), noise and a timestep exactly as the generator's
training does (uniform timesteps, the recipe's schedule, latents scaled as the model sees them),
and minimises 1 - cos(head(x_t, t), the image's own conditioning-embedder embedding). A share of
the identities (``train.identity_head.holdout``) is held out: the head's mean cosine to their
embeddings at a spread of noise levels is its accuracy (``accuracy.json``), beside what a constant
guess (the training images' mean embedding) scores.

It writes ``RUN_DIR/identity_head/`` (config.json, the safetensors weights, accuracy.json) as a
whole, and a copy into ``RUN_DIR/model/identity_head/`` when the run has exported its model
(``synthface train`` copies it there at every export too).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from synthface.atomic import atomic_write_text, copy_folder, staged_folder
from synthface.config import TrainRecipe
from synthface.errors import InputError
from synthface.generator.identity_head import ACCURACY_FILE, HEAD_DIR, IdentityHead
from synthface.generator.training.loop import Trainer
from synthface.generator.training.objective import step_generator
from synthface.runtime import Progress
from synthface.training import torch_threads

HEAD_SEED_OFFSET = 7_777  # the head's random draws never coincide with the generator run's


def split_identities(labels: np.ndarray, holdout: float, seed: int) -> np.ndarray:
    """A boolean mask of the held-out rows: ``holdout`` of the identities (at least one when > 0), seeded."""
    ids = np.unique(labels)
    count = int(round(holdout * len(ids)))
    if holdout > 0:
        count = max(1, count)
    if count >= len(ids):
        raise InputError(f"train.identity_head.holdout={holdout} holds out all {len(ids)} identities: lower it (or add people)")
    held = np.random.default_rng(seed).permutation(ids)[:count]
    return np.isin(labels, held)


class _Samples:
    """Clean samples in the model's space (scaled latents of an image or its mirror, or pixels in [-1, 1])."""

    def __init__(self, latents: np.ndarray | None, gain: float, crops: np.ndarray) -> None:
        self.latents, self.gain, self.crops = latents, gain, crops

    def __call__(self, idx: np.ndarray, flips: np.ndarray) -> torch.Tensor:
        if self.latents is not None:
            order = np.argsort(idx)
            rows = np.asarray(self.latents[idx[order]])[np.argsort(order)]  # memmap reads want sorted indices
            return torch.from_numpy(rows[np.arange(len(idx)), flips]).float() * self.gain
        x = torch.from_numpy(self.crops[idx]).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        return torch.where(torch.from_numpy(flips.astype(bool)).view(-1, 1, 1, 1), x.flip(-1), x)


def _cosines(head: IdentityHead, x0: torch.Tensor, emb: torch.Tensor, sched: Any, t: int, gen: torch.Generator,
             batch: int, device: torch.device) -> np.ndarray:  # fmt: skip
    out = []
    with torch.no_grad():
        for s in range(0, len(x0), batch):
            x = x0[s : s + batch]
            steps = torch.full((len(x),), t, dtype=torch.long)
            noisy = sched.add_noise(x, torch.randn(x.shape, generator=gen), steps)
            pred = head(noisy.to(device), steps.to(device)).cpu()
            out.append((pred * emb[s : s + batch]).sum(-1))
    return torch.cat(out).numpy()


def train_identity_head(
    config: TrainRecipe,
    data: str | Path,
    run_dir: str | Path,
    *,
    progress: Progress | None = None,
    embedder: Any = None,
) -> dict[str, Any]:
    """Train the identity head of the run ``run_dir`` (its cache: the same --data and recipe); see the module docstring."""
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_cosine_schedule_with_warmup

    from synthface.dataset.locks import RunLock

    c, h = config, config.train.identity_head
    run_dir = Path(run_dir)
    trainer = Trainer(config, data, run_dir, progress=progress, embedder=embedder)
    cpu = c.train.device == "cpu" or (c.train.device == "auto" and not torch.cuda.is_available())
    device = torch.device("cpu") if cpu else torch.device(c.train.device if c.train.device != "auto" else "cuda")
    wall0 = time.perf_counter()
    with torch_threads(c.train.threads):
        with RunLock(run_dir):
            faces = trainer.prepare_data(device)
            vae, latents, gain = trainer.prepare_latents(faces, device)
            sched = DDPMScheduler.from_config(trainer.scheduler_config())
            emb_all = faces.image_embeddings
            usable = np.isfinite(emb_all).all(axis=1)
            held = split_identities(faces.labels, h.holdout, c.seed)
            train_rows = np.flatnonzero(usable & ~held)
            test_rows = np.flatnonzero(usable & held)
            if len(train_rows) == 0:
                raise InputError("no embedded training image left for the identity head: unset data.embed_per_identity")
            samples = _Samples(latents, gain, faces.crops)
            probe = samples(train_rows[:1], np.zeros(1, dtype=np.int64))
            head_cfg = {
                "in_channels": int(probe.shape[1]),
                "sample_size": int(probe.shape[-1]),
                "embedding_dim": int(emb_all.shape[1]),
                "width": h.width,
                "levels": h.levels,
                "num_train_timesteps": int(sched.config.num_train_timesteps),
                "embedder": c.embedder,
                "latent_scale": float(getattr(vae.config, "scaling_factor", 1.0)) if vae is not None else 1.0,
            }
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(c.seed + HEAD_SEED_OFFSET)
                head = IdentityHead(**head_cfg)
            head.to(device).train()
            optimizer = torch.optim.AdamW(head.parameters(), lr=h.lr, weight_decay=0.01)
            lr_sched = get_cosine_schedule_with_warmup(optimizer, min(h.steps // 20, 200), h.steps)
            targets = torch.from_numpy(emb_all.astype(np.float32))
            flip = "flip" in c.train.augment
            history: list[dict[str, float]] = []
            window: list[float] = []
            trainer.progress.start(h.steps, "training the identity head")
            for step in range(h.steps):
                gen = step_generator(c.seed + HEAD_SEED_OFFSET, step, 0, 0)
                pick = train_rows[torch.randint(0, len(train_rows), (h.batch_size,), generator=gen).numpy()]
                flips = (
                    (torch.rand(h.batch_size, generator=gen) < 0.5).long().numpy() if flip else np.zeros(h.batch_size, np.int64)
                )
                x0 = samples(pick, flips)
                noise = torch.randn(x0.shape, generator=gen)
                steps_t = torch.randint(0, sched.config.num_train_timesteps, (h.batch_size,), generator=gen)
                noisy = sched.add_noise(x0, noise, steps_t)
                pred = head(noisy.to(device), steps_t.to(device))
                loss = (1.0 - F.cosine_similarity(pred, targets[pick].to(device), dim=-1)).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
                optimizer.step()
                lr_sched.step()
                window.append(float(loss.detach()))
                if (step + 1) % h.log_every == 0 or step + 1 == h.steps:
                    history.append({"step": step + 1, "loss": round(float(np.mean(window)), 6)})
                    window = []
                trainer.progress.advance(1, loss=float(loss.detach()))
            trainer.progress.finish()
            head.eval().requires_grad_(False)
            accuracy = _accuracy(head, samples, targets, train_rows, test_rows, sched, h.eval_timesteps, c.seed, device)
            accuracy.update(
                {
                    "steps": h.steps,
                    "train_images": int(len(train_rows)),
                    "train_identities": int(len(np.unique(faces.labels[train_rows]))),
                    "history": history,
                    "seconds": round(time.perf_counter() - wall0, 1),
                }
            )
            out = run_dir / HEAD_DIR
            with staged_folder(out, replace=True) as stage:
                head.save_pretrained(stage, safe_serialization=True)
                atomic_write_text(stage / ACCURACY_FILE, json.dumps(accuracy, indent=2) + "\n")
            model_dir = run_dir / "model"
            if model_dir.is_dir():
                copy_folder(out, model_dir / HEAD_DIR)
    return {"head": str(out), "model_head": str(model_dir / HEAD_DIR) if model_dir.is_dir() else None} | accuracy


def _accuracy(head: IdentityHead, samples: _Samples, targets: torch.Tensor, train_rows: np.ndarray, test_rows: np.ndarray,
              sched: Any, points: int, seed: int, device: torch.device) -> dict[str, Any]:  # fmt: skip
    """Held-out cosine of the head to the embedder per noise level, and what the training mean embedding scores."""
    T = int(sched.config.num_train_timesteps)
    levels = sorted({int(round(v)) for v in np.linspace(0, T - 1, points)})
    result: dict[str, Any] = {"heldout_images": int(len(test_rows)), "levels": []}
    if len(test_rows) == 0:
        return result
    x0 = samples(test_rows, np.zeros(len(test_rows), np.int64))
    emb = targets[test_rows]
    mean = F.normalize(targets[train_rows].mean(0, keepdim=True), dim=-1)
    result["constant_guess_cosine"] = round(float((emb * mean).sum(-1).mean()), 4)
    for t in levels:
        gen = torch.Generator().manual_seed(seed * 1_000 + t)
        cos = _cosines(head, x0, emb, sched, t, gen, 64, device)
        a = float(sched.alphas_cumprod[t])
        result["levels"].append(
            {
                "timestep": t,
                "alpha_bar": round(a, 6),
                "snr": round(a / max(1.0 - a, 1e-12), 6),
                "cosine_mean": round(float(cos.mean()), 4),
                "cosine_median": round(float(np.median(cos)), 4),
            }
        )
    return result
