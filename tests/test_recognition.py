"""Recognizer building blocks: margin heads against hand-computed logits, IResNet shapes and sizes."""

from __future__ import annotations

import math

import pytest
import torch

from synthface.errors import ConfigError
from synthface.recognition.backbones import BACKBONES, count_parameters, get_backbone
from synthface.recognition.losses import (
    AdaFaceHead,
    ArcFaceHead,
    CombinedMarginHead,
    CosFaceHead,
    get_head,
)

# Three unit class centres in 2-D and one embedding of norm 5 at angle 0.3 rad from class 0:
# cos to the classes = [cos 0.3, sin 0.3, -cos 0.3] = [0.955336489, 0.295520207, -0.955336489].
CENTRES = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
EMB = 5.0 * torch.tensor([[math.cos(0.3), math.sin(0.3)]])
COS = [0.955336489125606, 0.29552020666133955, -0.955336489125606]
S = 2.0


pytestmark = pytest.mark.usefixtures("one_thread")


def _head(cls, **kw):
    head = cls(3, 2, scale=S, **kw)
    with torch.no_grad():
        head.weight.copy_(CENTRES * 3.0)  # centres are normalised: their length must not matter
    return head.eval()


def _check(head, label: int, target: float):
    got = head.logits(EMB, torch.tensor([label]))[0]
    want = [S * c for c in COS]
    want[label] = S * target
    assert got.tolist() == pytest.approx(want, abs=1e-5)


def test_arcface_logit_is_cos_theta_plus_m():
    # label 0: theta = 0.3, cos(0.3 + 0.5) = cos(0.8) = 0.696706709
    _check(_head(ArcFaceHead, margin=0.5), 0, 0.6967067093471654)


def test_arcface_falls_back_past_pi():
    # label 2: theta = pi - 0.3, theta + 0.5 > pi -> cos(theta) - m*sin(pi - m) = -0.955336 - 0.5*0.479426 = -1.195049
    _check(_head(ArcFaceHead, margin=0.5), 2, -0.955336489125606 - 0.5 * 0.479425538604203)


def test_cosface_logit_is_cos_minus_m():
    # label 1: sin(0.3) - 0.35 = -0.054479793
    _check(_head(CosFaceHead, margin=0.35), 1, -0.05447979333866043)


def test_combined_margin_logit():
    # m1=1, m2=0.3, m3=0.2, label 0: cos(0.3 + 0.3) - 0.2 = 0.825335615 - 0.2 = 0.625335615
    _check(_head(CombinedMarginHead, m1=1.0, m2=0.3, m3=0.2), 0, 0.6253356149096783)
    # m1=2 (SphereFace part): cos(2*0.3 + 0.3) - 0.2 = cos(0.9) - 0.2 = 0.621609968 - 0.2
    _check(_head(CombinedMarginHead, m1=2.0, m2=0.3, m3=0.2), 0, 0.6216099682706644 - 0.2)


def test_adaface_logit_uses_norm_statistics():
    # initial running stats mean 20, std 100; ||z|| = 5, h = 0.333, m = 0.4:
    # g = 0.333 * (5 - 20) / (100 + 0.001) = -0.049949501
    # target = cos(0.3 - 0.4*g) - (0.4 + 0.4*g) = cos(0.31998) - 0.38002 = 0.569221572
    _check(_head(AdaFaceHead, margin=0.4, h=0.333), 0, 0.5692215722717618)


def test_adaface_updates_running_stats_only_when_training():
    head = _head(AdaFaceHead, margin=0.4, t_alpha=0.01)
    emb = torch.tensor([[3.0, 4.0], [6.0, 8.0]])  # norms 5 and 10: mean 7.5, std 3.5355
    head.logits(emb, torch.tensor([0, 1]))
    assert head.batch_mean.item() == pytest.approx(20.0)
    head.train()
    head.logits(emb, torch.tensor([0, 1]))
    assert head.batch_mean.item() == pytest.approx(0.99 * 20 + 0.01 * 7.5)
    assert head.batch_std.item() == pytest.approx(0.99 * 100 + 0.01 * math.sqrt(12.5))


def test_unlabelled_rows_get_no_margin_and_loss_backpropagates():
    head = _head(ArcFaceHead, margin=0.5).train()
    emb = EMB.repeat(2, 1).requires_grad_(True)
    logits = head.logits(emb, torch.tensor([0, -1]))
    assert logits[1].tolist() == pytest.approx([S * c for c in COS], abs=1e-5)
    loss, cos = head(emb, torch.tensor([0, 1]))
    loss.backward()
    assert loss.item() > 0 and cos.shape == (2, 3)
    assert head.weight.grad is not None and emb.grad is not None and emb.grad.abs().sum() > 0


def test_get_head_names():
    assert isinstance(get_head("arcface", 5, 8), ArcFaceHead)
    assert isinstance(get_head("cosface", 5, 8, margin=0.35), CosFaceHead)
    assert isinstance(get_head("combined", 5, 8, combined=(1.0, 0.3, 0.2)), CombinedMarginHead)
    assert isinstance(get_head("adaface", 5, 8), AdaFaceHead)
    with pytest.raises(ConfigError):
        get_head("softmax", 5, 8)
    with pytest.raises(ConfigError):
        get_head("arcface", 1, 8)


def test_iresnet_sizes_match_arcface_torch():
    # arcface_torch's r50 has 43.6M parameters and r100 65.2M (512-d, 112x112 input)
    assert count_parameters(get_backbone("iresnet50")) == pytest.approx(43.59e6, rel=0.01)
    assert count_parameters(get_backbone("iresnet100")) == pytest.approx(65.15e6, rel=0.01)
    assert set(BACKBONES) >= {"iresnet18", "iresnet34", "iresnet50", "iresnet100", "iresnet-mini"}


def test_iresnet18_embeds_112_crops_to_512():
    model = get_backbone("iresnet18").eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 112, 112))
    assert out.shape == (2, 512) and torch.isfinite(out).all()


@pytest.mark.parametrize("size", [32, 56, 64])
def test_mini_backbone_any_input_size(size):
    model = get_backbone("iresnet-mini", embedding_dim=64, input_size=size).eval()
    assert model.input_size == size
    with torch.no_grad():
        assert model(torch.randn(3, 3, size, size)).shape == (3, 64)


def test_unknown_backbone_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown backbone"):
        get_backbone("resnet9000")
