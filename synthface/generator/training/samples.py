"""Sample grids of a training run: fixed identities x fixed seeds with the EMA weights, and how far the
renders move with the identity (samples/condition.csv)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthface.atomic import atomic_write_text
from synthface.config import TrainRecipe
from synthface.generator.training.checkpoints import ema_weights, model_view
from synthface.generator.training.data import FaceData
from synthface.generator.training.report import image_grid, save_png
from synthface.generator.training.state import TrainState


def sample_identities(faces: FaceData, count: int) -> list[int]:
    """The identities of the sample grids: those with the most images (ties by name), fixed for a run."""
    counts = np.bincount(faces.labels, minlength=faces.num_identities)
    order = sorted(range(faces.num_identities), key=lambda i: (-counts[i], faces.identities[i]))
    return order[: min(count, faces.num_identities)]


def sample_grid(state: TrainState, config: TrainRecipe, run_dir: Path) -> Path:
    """RUN_DIR/samples/step-NNNNNNN.png: a real face, then one render per seed, per grid identity; last
    row: the same seeds without identity."""
    from synthface.generator.pipeline import generate

    t, faces, ids, step = config.train, state.faces, state.grid_ids, state.step
    view = model_view(state)
    n_seeds = t.sample_seeds
    emb = np.repeat(faces.identity_embeddings[ids], n_seeds, axis=0)
    seeds = np.array([config.seed * 1000 + j for _ in ids for j in range(n_seeds)])
    was_training = state.denoiser.training
    state.denoiser.eval()
    options: dict[str, Any] = {"scheduler": t.sample_scheduler, "steps": t.sample_steps}
    with torch.random.fork_rng(devices=[]), ema_weights(state.ema, state.params):
        images = generate(view, emb, seeds, batch_size=max(2, len(seeds)), guidance_scale=t.guidance_scale, **options)
        # the same seeds without identity: the last row of the grid, and the yardstick of how much the condition matters
        uncond = generate(
            view, None, seeds[:n_seeds], batch_size=max(2, n_seeds), guidance_scale=1.0, unconditional=True, **options
        )
    state.denoiser.train(was_training)
    log_condition_effect(run_dir, step, images.reshape(len(ids), n_seeds, *images.shape[1:]), uncond)
    rows = []
    for k, ident in enumerate(ids):
        real = faces.crops[int(np.flatnonzero(faces.labels == ident)[0])]
        if real.shape[:2] != images.shape[1:3]:
            from PIL import Image

            real = np.asarray(Image.fromarray(real).resize(images.shape[1:3][::-1], Image.Resampling.BICUBIC))
        rows.append([real] + list(images[k * n_seeds : (k + 1) * n_seeds]))
    rows.append([np.full_like(rows[0][0], 255)] + list(uncond))
    scale = max(1, 96 // images.shape[1])
    return save_png(image_grid(rows, scale=scale), run_dir / "samples" / f"step-{step:07d}.png")


def log_condition_effect(run_dir: Path, step: int, cond: np.ndarray, uncond: np.ndarray) -> None:
    """Append to samples/condition.csv how far renders of one seed move with the identity (0-255 units).

    ``cond_vs_uncond``: mean |conditional - unconditional| render of the same seed;
    ``between_identities``: mean |render of identity a - render of identity b| of the same seed.
    Both stay near 0 while the model ignores its condition.
    """
    c = cond.astype(np.float32)
    vs_uncond = float(np.abs(c - uncond.astype(np.float32)[None]).mean())
    between = float(np.abs(c[:, None] - c[None]).mean() * len(c) / max(len(c) - 1, 1)) if len(c) > 1 else 0.0
    path = run_dir / "samples" / "condition.csv"
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else ["step,cond_vs_uncond,between_identities"]
    lines = [ln for ln in lines if not ln.startswith(f"{step},")] + [f"{step},{vs_uncond:.3f},{between:.3f}"]
    atomic_write_text(path, "\n".join(lines) + "\n")
