"""One micro-batch of a training step: its seeded draws, forward pass, losses and backward pass."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from synthface.config import TrainRecipe
from synthface.generator.training.objective import Batch, augment_pixels, drop_mask, loss_weights, step_generator, training_target
from synthface.generator.training.state import TrainState


def batch(state: TrainState, config: TrainRecipe, micro: int) -> tuple[Batch, torch.Generator]:
    """Micro-batch ``micro`` of this process at the current step, and the generator of its draws."""
    t = config.train
    gen = step_generator(config.seed, state.step, micro, state.rank)
    idx = state.sampler.take(t.batch_size * state.world)[state.rank :: state.world]
    if state.latents is not None:
        flips = (
            (torch.rand(len(idx), generator=gen) < 0.5).long() if "flip" in t.augment else torch.zeros(len(idx), dtype=torch.long)
        )
        sel = np.asarray(state.latents[np.sort(idx.numpy())])  # memmap reads want sorted indices
        order = np.argsort(np.argsort(idx.numpy()))
        x0 = torch.from_numpy(sel[order]).float()[torch.arange(len(idx)), flips] * state.latent_gain
    else:
        x0 = augment_pixels(state.crops[idx], t.augment, t.jitter, gen)
    return Batch(x0, state.conds[idx], state.raw_conds[idx]), gen


def micro_step(state: TrainState, config: TrainRecipe, micro: int, id_sum: torch.Tensor) -> torch.Tensor:
    """Forward and backward of one micro-batch; returns its denoising loss (adds the identity term to ``id_sum``)."""
    t, accelerator, device, sched = config.train, state.accelerator, state.device, state.noise_sched
    b, gen = batch(state, config, micro)
    noise = torch.randn(b.x0.shape, generator=gen)
    steps_t = torch.randint(0, sched.config.num_train_timesteps, (b.x0.shape[0],), generator=gen)
    mask = drop_mask(b.x0.shape[0], t.cond_dropout, gen)
    noisy = sched.add_noise(b.x0, noise, steps_t)
    target = training_target(sched, b.x0, noise, steps_t)
    weights = loss_weights(sched, steps_t, t.snr_gamma)
    sync = micro == t.grad_accum - 1
    with contextlib.nullcontext() if sync else accelerator.no_sync(state.denoiser):
        with accelerator.autocast():
            pred = state.denoiser(noisy.to(device), steps_t.to(device), b.cond.to(device), mask.to(device))
        if weights is None:
            loss = F.mse_loss(pred.float(), target.to(device).float())
        else:
            per = F.mse_loss(pred.float(), target.to(device).float(), reduction="none").mean(dim=(1, 2, 3))
            loss = (per * weights.to(device)).mean()
        total = loss
        if state.id_loss is not None:
            term, rows = state.id_loss(noisy.to(device), pred, steps_t.to(device), b.target, mask)
            if term is not None:
                total = loss + t.identity_loss.weight * term
                id_sum += torch.tensor([float(term.detach()) * rows, rows])
        accelerator.backward(total / t.grad_accum)
    return loss.detach()
