"""IResNet face-recognition backbones (insightface arcface_torch layout) and a name registry.

An IResNet is a pre-activation ResNet with PReLU, four stride-2 stages and an
"output layer" BN -> Dropout -> FC -> BN1d that maps the last feature map to the
embedding, as in insightface's ``recognition/arcface_torch/backbones/iresnet.py``
(Deng et al., ArcFace, CVPR 2019; Duta et al., Improved Residual Networks, 2020).
The standard models take 112x112 ArcFace-template crops and give 512-d embeddings.

``iresnet-mini`` is the same design made small enough to train on a CPU: the
iresnet18 depth (2-2-2-2 blocks) at a quarter of the width (16-32-64-128 channels),
meant for 56x56 input (the 112 template halved, so the five reference points keep
their relative places). Every backbone accepts any square input size; the FC layer is
sized from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from synthface.errors import ConfigError


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN, plus the (projected) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=1e-5)
        self.conv1 = _conv3x3(cin, cout)
        self.bn2 = nn.BatchNorm2d(cout, eps=1e-5)
        self.prelu = nn.PReLU(cout)
        self.conv2 = _conv3x3(cout, cout, stride)
        self.bn3 = nn.BatchNorm2d(cout, eps=1e-5)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(cout, eps=1e-5)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


def _stage_out(size: int) -> int:
    """Side length after a 3x3 stride-2 convolution with padding 1."""
    return (size + 1) // 2


class IResNet(nn.Module):
    """Improved ResNet: stem conv3x3 -> 4 stages of IBasicBlocks -> BN-Dropout-FC-BN1d embedding head."""

    def __init__(
        self,
        layers: tuple[int, int, int, int],
        widths: tuple[int, int, int, int] = (64, 128, 256, 512),
        embedding_dim: int = 512,
        input_size: int = 112,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.input_size = input_size
        self.embedding_dim = embedding_dim
        stem = widths[0]
        self.conv1 = _conv3x3(3, stem)
        self.bn1 = nn.BatchNorm2d(stem, eps=1e-5)
        self.prelu = nn.PReLU(stem)
        stages = []
        cin = stem
        for n_blocks, width in zip(layers, widths):
            blocks = [IBasicBlock(cin, width, stride=2)] + [IBasicBlock(width, width) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        side = input_size
        for _ in range(4):
            side = _stage_out(side)
        self.bn2 = nn.BatchNorm2d(cin, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(cin * side * side, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim, eps=1e-5)
        # as arcface_torch: the last BN only shifts (its scale is frozen at 1)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.bn2(x), 1)
        x = self.fc(self.dropout(x))
        return self.features(x.float())


@dataclass(frozen=True)
class BackboneSpec:
    layers: tuple[int, int, int, int]
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    input_size: int = 112  # the size the architecture is meant for


BACKBONES: dict[str, BackboneSpec] = {
    "iresnet18": BackboneSpec((2, 2, 2, 2)),
    "iresnet34": BackboneSpec((3, 4, 6, 3)),
    "iresnet50": BackboneSpec((3, 4, 14, 3)),
    "iresnet100": BackboneSpec((3, 13, 30, 3)),
    "iresnet-mini": BackboneSpec((2, 2, 2, 2), widths=(16, 32, 64, 128), input_size=56),
}


def default_input_size(name: str) -> int:
    return _spec(name).input_size


def _spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        known = ", ".join(BACKBONES)
        raise ConfigError(f"unknown backbone '{name}': use one of {known}") from None


def get_backbone(name: str, embedding_dim: int = 512, input_size: int | None = None, dropout: float = 0.0) -> IResNet:
    """Build a randomly initialised backbone by registry name (see ``BACKBONES``)."""
    spec = _spec(name)
    size = input_size or spec.input_size
    if size < 16:
        raise ConfigError(f"input size {size} is too small for {name}: use 16 px or more (112 is standard)")
    return IResNet(spec.layers, spec.widths, embedding_dim=embedding_dim, input_size=size, dropout=dropout)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
