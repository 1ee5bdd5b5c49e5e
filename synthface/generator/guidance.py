"""Identity guidance for the sampling loop: the gradient of the cosine between a differentiable face
embedder's embedding of the decoded x0 estimate and the target identity (:func:`identity_gradient`),
or between a noise-aware identity head's reading of x_t and the target (:func:`head_gradient`), and
the conversions between a scheduler's prediction type and the noise prediction it is applied to.
The training loop's identity term (``train.identity_loss``) embeds its x0 estimates with the same
:func:`to_eps_x0` and :func:`embed_x0`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from synthface.errors import ConfigError
from synthface.generator.identity_head import IdentityHead

if TYPE_CHECKING:
    from synthface.generator.model import GeneratorModel

MIN_GUIDED_ALPHA_BAR = 1e-4  # identity guidance skips steps noisier than this (zero-terminal-SNR schedules start at 0)


def _roots(a: float | torch.Tensor) -> tuple[float | torch.Tensor, float | torch.Tensor]:
    if torch.is_tensor(a):
        return a.sqrt(), (1.0 - a).sqrt()
    return math.sqrt(a), math.sqrt(1.0 - a)


def to_eps_x0(pred_type: str, out: torch.Tensor, x: torch.Tensor, a: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise, x0) estimates of the model output ``out`` of ``pred_type`` at ``x`` with cumulative alpha
    ``a`` (a number, or a tensor broadcasting over ``x``: one per sample of a training batch)."""
    sa, sb = _roots(a)
    if pred_type == "epsilon":
        return out, (x - sb * out) / sa
    if pred_type == "v_prediction":
        return sa * out + sb * x, sa * x - sb * out
    if pred_type == "sample":
        return (x - sa * out) / (sb.clamp_min(1e-8) if torch.is_tensor(sb) else max(sb, 1e-8)), out
    raise ConfigError(f"unsupported scheduler prediction_type '{pred_type}' (epsilon, v_prediction or sample)")


def from_eps(pred_type: str, eps: torch.Tensor, x: torch.Tensor, a: float) -> torch.Tensor:
    """The model output of ``pred_type`` that the noise estimate ``eps`` at ``x`` stands for (inverse of :func:`to_eps_x0`)."""
    sa, sb = math.sqrt(a), math.sqrt(1.0 - a)
    x0 = (x - sb * eps) / sa
    if pred_type == "epsilon":
        return eps
    if pred_type == "v_prediction":
        return sa * eps - sb * x0
    return x0


def embed_x0(model: GeneratorModel, guide: torch.nn.Module, x0: torch.Tensor) -> torch.Tensor:
    """``guide``'s embeddings of the x0 estimates ``x0`` decoded to images in [0, 1]; differentiable.

    No clamp: it would zero the gradient wherever a noisy x0 estimate leaves [-1, 1].
    """
    images = model.decode(x0.to(model.dtype)).float().div(2).add(0.5)
    return guide(images).float()


def identity_gradient(
    model: GeneratorModel,
    guide: torch.nn.Module,
    x: torch.Tensor,
    eps: torch.Tensor,
    alpha_bar: float,
    target: torch.Tensor,
) -> torch.Tensor:
    """d cos(guide(decode(x0_hat)), target) / d x_t, with x0_hat = (x_t - sqrt(1-a) eps) / sqrt(a).

    ``guide`` maps images (B, 3, H, W) in [0, 1] to embeddings in the conditioning space. The noise
    prediction is held fixed (the usual classifier-guidance approximation), so the gradient flows
    through the VAE decoder (if any) and the guide only. Samples are decoded one at a time.
    """
    sa, sb = math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
    grads = []
    with torch.enable_grad():
        for i in range(x.shape[0]):
            xi = x[i : i + 1].detach().float().requires_grad_(True)
            x0 = (xi - sb * eps[i : i + 1].detach().float()) / sa
            emb = embed_x0(model, guide, x0)
            cos = F.cosine_similarity(emb, target[i : i + 1].to(emb.device, emb.dtype), dim=-1).sum()
            (grad,) = torch.autograd.grad(cos, xi)
            grads.append(grad)
    return torch.cat(grads)


def head_gradient(head: IdentityHead, x: torch.Tensor, t: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """d cos(head(x_t, t), target) / d x_t: classifier guidance by a noise-aware identity head.

    The head reads the noisy sample itself, so neither the UNet's prediction nor a decoder is on
    the gradient's path. One sample at a time, like :func:`identity_gradient` (batch-invariant).
    """
    grads = []
    step = torch.as_tensor(t, device=x.device).reshape(1)
    with torch.enable_grad():
        for i in range(x.shape[0]):
            xi = x[i : i + 1].detach().float().requires_grad_(True)
            emb = head(xi, step)
            cos = F.cosine_similarity(emb, target[i : i + 1].to(emb.device, emb.dtype), dim=-1).sum()
            (grad,) = torch.autograd.grad(cos, xi)
            grads.append(grad)
    return torch.cat(grads)


def guide_gradient(
    model: GeneratorModel,
    guide: torch.nn.Module,
    x: torch.Tensor,
    eps: torch.Tensor,
    alpha_bar: float,
    t: torch.Tensor,
    target: torch.Tensor,
) -> torch.Tensor:
    """The identity gradient w.r.t. x_t of whichever guide ``guide`` is: an :class:`IdentityHead`
    (:func:`head_gradient`) or a pixel-space embedder (:func:`identity_gradient`)."""
    if isinstance(guide, IdentityHead):
        return head_gradient(guide, x, t, target)
    return identity_gradient(model, guide, x, eps, alpha_bar, target)
