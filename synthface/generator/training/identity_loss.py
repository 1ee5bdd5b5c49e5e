"""The identity-preserving training term (``train.identity_loss``): 1 - cos(embedding of x0_hat, condition).

x0_hat is the one-step estimate of the clean sample from the UNet's prediction at the noisy input
(epsilon or v-prediction, through the scheduler's cumulative alphas: :func:`synthface.generator.guidance.to_eps_x0`).
It is embedded either ``through: decode`` (the frozen VAE decoder, none for pixel models, then the
conditioning embedder's differentiable module at the model's crop geometry, which warps the loose
crop to its own template: :func:`synthface.generator.guidance.embed_x0`) or ``through: head`` (the
run's noise-aware latent identity head read at timestep 0, no decoder). The target is the
uncentred conditioning embedding. The term is computed on the first ``fraction`` of each
micro-batch among the rows that keep their condition (not dropped for classifier-free guidance) and
were noised to a timestep in ``timesteps``; the gradient reaches the UNet through x0_hat only.
It draws no random numbers, so the rest of a step is the step it would be without it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from synthface.config import IdentityLossSection, TrainRecipe
from synthface.errors import ConfigError
from synthface.generator.guidance import embed_x0, to_eps_x0
from synthface.generator.identity_head import IdentityHead


class IdentityLoss:
    """Callable on one micro-batch: (noisy, prediction, timesteps, targets, drop mask) -> (mean term, rows) or (None, 0).

    ``guide`` (an embedder's differentiable module or an identity head) is frozen here.
    """

    def __init__(self, section: IdentityLossSection, scheduler: Any, model: Any, guide: torch.nn.Module) -> None:
        self.section = section
        self.model = model
        self.guide = guide.eval()
        for param in guide.parameters():  # frozen: the gradient goes to x0_hat (and the UNet) only
            param.requires_grad_(False)
        self.pred_type = str(scheduler.config.prediction_type)
        self.alphas = scheduler.alphas_cumprod.to(torch.float32)

    def rows(self, timesteps: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
        """Indices of the rows the term is computed on: the first ``fraction`` of the batch among the eligible."""
        lo, hi = self.section.timesteps
        steps = timesteps.cpu()
        eligible = (~dropped.cpu().bool()) & (steps >= lo) & (steps <= hi)
        count = max(1, math.ceil(self.section.fraction * len(steps) - 1e-9))
        return torch.nonzero(eligible).flatten()[:count]

    def __call__(
        self, noisy: torch.Tensor, pred: torch.Tensor, timesteps: torch.Tensor, targets: torch.Tensor, dropped: torch.Tensor
    ) -> tuple[torch.Tensor | None, int]:
        idx = self.rows(timesteps, dropped)
        if len(idx) == 0:
            return None, 0
        idx = idx.to(pred.device)
        a = self.alphas.to(pred.device)[timesteps.to(pred.device)[idx]].view(-1, 1, 1, 1)
        _, x0 = to_eps_x0(self.pred_type, pred[idx].float(), noisy[idx].float(), a)
        if isinstance(self.guide, IdentityHead):
            emb = self.guide(x0, torch.zeros(len(idx), dtype=torch.long, device=x0.device))
        else:
            emb = embed_x0(self.model, self.guide, x0)
        cos = F.cosine_similarity(emb, targets[idx].to(emb.device, emb.dtype), dim=-1)
        return (1.0 - cos).mean(), len(idx)


def check_identity_head(config: TrainRecipe, where: Path) -> None:
    """Before anything is written: ``train.identity_loss.through=head`` needs its head."""
    section = config.train.identity_loss
    if section.weight > 0 and section.through == "head" and not (where / "config.json").is_file():
        raise ConfigError(
            f"train.identity_loss.through=head needs a trained identity head in {where}: run `synthface train-head` "
            "with the same --data, --recipe and --out first (or name one with train.identity_loss.head)"
        )


def identity_loss_for(
    config: TrainRecipe, where: Path, model: Any, noise_sched: Any, device: torch.device, embedder: Any = None
) -> IdentityLoss | None:
    """The identity term of ``train.identity_loss`` (None when its weight is 0), its guide frozen on ``device``."""
    section = config.train.identity_loss
    if section.weight <= 0:
        return None
    if section.through == "head":
        from synthface.generator.identity_head import check_head, load_identity_head

        guide = load_identity_head(where, device)
        check_head(guide, model, str(where))
    else:
        from synthface.generator.planning import identity_guide_for

        guide = identity_guide_for(model, device, embedder=embedder).to(device)
    return IdentityLoss(section, noise_sched, model, guide)
