"""Margin-softmax classification heads for face recognition: ArcFace, CosFace, combined margins, AdaFace.

Each head owns the class-centre matrix ``weight`` (num_classes x embedding_dim),
computes cosines between L2-normalised embeddings and centres, puts a margin on the
target class and scales: ``logits(embeddings, labels)`` returns those logits (for
tests and inspection) and ``forward`` the cross-entropy loss plus the plain cosines.

Formulas (theta = angle between an embedding and its target class centre, s = scale):

* combined (insightface, m1/m2/m3): target logit ``s * (cos(m1*theta + m2) - m3)``;
  when ``m1*theta + m2 > pi`` (cos is no longer decreasing) insightface's fallback
  ``s * (cos(theta) - m3 - m2*sin(pi - m2))`` keeps the logit decreasing in theta.
* ArcFace (Deng et al. 2019) = combined(1, m, 0); CosFace (Wang et al. 2018) = combined(1, 0, m).
* AdaFace (Kim et al. 2022): the margin adapts to image quality, read from the feature
  norm ``||z||``: ``g = clip(h * (||z|| - mu) / (sigma + eps), -1, 1)`` with mu/sigma
  running (EMA, factor ``t_alpha``) batch mean and std of the norms; target logit
  ``s * (cos(clip(theta - m*g, eps, pi - eps)) - (m + m*g))``, cosines clamped to
  ``[-1 + eps, 1 - eps]`` as in the reference implementation.

Written here rather than taken from pytorch-metric-learning: its ArcFaceLoss/CosFaceLoss
return only the reduced loss (their ``get_logits`` gives ``s*cos`` without the margin),
it has neither insightface's combined margins nor AdaFace, and all four heads here share
one class-centre layout, one logits path and one checkpoint format.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from synthface.errors import ConfigError


class MarginHead(nn.Module):
    """Base: normalised class centres, cosine logits, margin on the target class, scale."""

    def __init__(self, num_classes: int, embedding_dim: int, scale: float = 64.0) -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"a classification head needs at least 2 identities, the data has {num_classes}")
        self.num_classes = num_classes
        self.scale = float(scale)
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.normal_(self.weight, std=0.01)  # as arcface_torch's PartialFC

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(embeddings.float()), F.normalize(self.weight.float()))

    def target_logit(self, cos_t: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """Margin-adjusted cosine of each sample's target class (before scaling)."""
        raise NotImplementedError

    def prepare_cosine(self, cos: torch.Tensor) -> torch.Tensor:
        return cos

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scaled logits with the margin applied to the target class (labels == -1: no margin)."""
        cos = self.prepare_cosine(self.cosine(embeddings))
        return self._margin_logits(cos, embeddings, labels)

    def _margin_logits(self, cos: torch.Tensor, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        rows = torch.nonzero(labels != -1, as_tuple=True)[0]
        cols = labels[rows]
        target = self.target_logit(cos[rows, cols], embeddings[rows])
        out = cos.index_put((rows, cols), target)
        return out * self.scale

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy loss over the margin logits, and the plain cosines (detached) for accuracy."""
        cos = self.prepare_cosine(self.cosine(embeddings))
        logits = self._margin_logits(cos, embeddings, labels)
        return F.cross_entropy(logits, labels, ignore_index=-1), cos.detach()


class CombinedMarginHead(MarginHead):
    """insightface's combined margin: cos(m1*theta + m2) - m3 on the target class."""

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        scale: float = 64.0,
        m1: float = 1.0,
        m2: float = 0.5,
        m3: float = 0.0,
    ) -> None:
        super().__init__(num_classes, embedding_dim, scale)
        if m1 < 1.0 or m2 < 0 or m3 < 0:
            raise ConfigError(f"combined margins need m1 >= 1, m2 >= 0, m3 >= 0, got ({m1}, {m2}, {m3})")
        self.m1, self.m2, self.m3 = float(m1), float(m2), float(m3)

    def target_logit(self, cos_t: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        if self.m1 == 1.0 and self.m2 == 0.0:
            return cos_t - self.m3
        theta = torch.acos(cos_t.clamp(-1.0 + 1e-7, 1.0 - 1e-7))
        angle = self.m1 * theta + self.m2
        margin = torch.cos(angle) - self.m3
        fallback = cos_t - self.m3 - self.m2 * math.sin(math.pi - self.m2)
        return torch.where(angle <= math.pi, margin, fallback)


class ArcFaceHead(CombinedMarginHead):
    """Additive angular margin: cos(theta + m)."""

    def __init__(self, num_classes: int, embedding_dim: int, scale: float = 64.0, margin: float = 0.5) -> None:
        super().__init__(num_classes, embedding_dim, scale, m1=1.0, m2=margin, m3=0.0)


class CosFaceHead(CombinedMarginHead):
    """Additive cosine margin: cos(theta) - m."""

    def __init__(self, num_classes: int, embedding_dim: int, scale: float = 64.0, margin: float = 0.35) -> None:
        super().__init__(num_classes, embedding_dim, scale, m1=1.0, m2=0.0, m3=margin)


class AdaFaceHead(MarginHead):
    """Quality-adaptive margin from the feature norm, with running batch statistics of the norms."""

    eps = 1e-3

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        scale: float = 64.0,
        margin: float = 0.4,
        h: float = 0.333,
        t_alpha: float = 0.01,
    ) -> None:
        super().__init__(num_classes, embedding_dim, scale)
        self.m, self.h, self.t_alpha = float(margin), float(h), float(t_alpha)
        self.register_buffer("batch_mean", torch.full((1,), 20.0))
        self.register_buffer("batch_std", torch.full((1,), 100.0))

    def prepare_cosine(self, cos: torch.Tensor) -> torch.Tensor:
        return cos.clamp(-1.0 + self.eps, 1.0 - self.eps)

    def margin_scaler(self, embeddings: torch.Tensor) -> torch.Tensor:
        """g in [-1, 1] per sample; updates the running norm statistics while training."""
        norms = embeddings.detach().float().norm(dim=1).clamp(0.001, 100.0)
        if self.training and norms.numel() > 1:
            with torch.no_grad():
                self.batch_mean.mul_(1 - self.t_alpha).add_(self.t_alpha * norms.mean())
                self.batch_std.mul_(1 - self.t_alpha).add_(self.t_alpha * norms.std())
        g = (norms - self.batch_mean) / (self.batch_std + self.eps)
        return (g * self.h).clamp(-1.0, 1.0)

    def target_logit(self, cos_t: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        g = self.margin_scaler(embeddings)
        theta = torch.acos(cos_t)
        theta_m = (theta - self.m * g).clamp(self.eps, math.pi - self.eps)
        return torch.cos(theta_m) - (self.m + self.m * g)


LOSSES = ("arcface", "cosface", "combined", "adaface")


def get_head(
    name: str,
    num_classes: int,
    embedding_dim: int,
    *,
    margin: float = 0.5,
    scale: float = 64.0,
    combined: tuple[float, float, float] = (1.0, 0.3, 0.2),
    adaface_h: float = 0.333,
    adaface_t_alpha: float = 0.01,
) -> MarginHead:
    """Build a margin head by name: arcface | cosface | combined | adaface."""
    if name == "arcface":
        return ArcFaceHead(num_classes, embedding_dim, scale, margin)
    if name == "cosface":
        return CosFaceHead(num_classes, embedding_dim, scale, margin)
    if name == "combined":
        m1, m2, m3 = combined
        return CombinedMarginHead(num_classes, embedding_dim, scale, m1, m2, m3)
    if name == "adaface":
        return AdaFaceHead(num_classes, embedding_dim, scale, margin, adaface_h, adaface_t_alpha)
    raise ConfigError(f"unknown loss '{name}': use one of {', '.join(LOSSES)}")
