"""Small face-recognition backbones for the synthetic world (CPU-sized, 112x112 input, D-dim output).

Both follow the shape of their full-size namesakes — an IR-style residual network (insightface /
face.evoLVe "IR") and a MobileFaceNet (depthwise bottlenecks, global depthwise head) — scaled down so
that one trains in well under a minute on two CPU cores. Inputs are normalised tensors; the
:class:`~opom.models.zoo.FaceModel` wrapper owns the preprocessing.

Each backbone lists its ``dfanet_sites()``: the convolutions after which DFANet (Wang et al., CVPR 2021,
as used by OPOM) inserts dropout — the input conv and both convs of every residual branch.
"""

from __future__ import annotations

import torch
from torch import nn

from opom.errors import ConfigError


def _conv_bn_prelu(cin: int, cout: int, k: int, s: int, p: int, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, s, p, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.PReLU(cout)]


class IRBlock(nn.Module):
    """Pre-activation IR block: BN - conv3x3(stride) - BN - PReLU - conv3x3 - BN, plus a projected shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.res = nn.Sequential(nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                                 nn.BatchNorm2d(cout), nn.PReLU(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                                 nn.BatchNorm2d(cout))
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    @property
    def convs(self) -> list[nn.Module]:
        return [self.res[1], self.res[4]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res(x) + self.shortcut(x)


class ResNetS(nn.Module):
    """IR-style residual network: two strided stem convs, two IR stages, BN-Flatten-Linear-BN head."""

    def __init__(self, widths: tuple[int, ...] = (8, 16, 32, 64), embedding_size: int = 128):
        super().__init__()
        w = widths
        self.stem = nn.Sequential(*_conv_bn_prelu(3, w[0], 3, 2, 1), *_conv_bn_prelu(w[0], w[1], 3, 2, 1))
        self.body = nn.Sequential(*(IRBlock(a, b, 2) for a, b in zip(w[1:-1], w[2:], strict=True)))
        self.head = nn.Sequential(nn.BatchNorm2d(w[-1]), nn.Flatten(), nn.Linear(w[-1] * 7 * 7, embedding_size),
                                  nn.BatchNorm1d(embedding_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x)))

    def dfanet_sites(self) -> list[nn.Module]:
        return [self.stem[0], self.stem[3]] + [c for blk in self.body for c in blk.convs]


class DepthwiseBottleneck(nn.Module):
    """MobileFaceNet bottleneck: 1x1 expand - 3x3 depthwise(stride) - 1x1 project, residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int = 2):
        super().__init__()
        hidden = cin * expansion
        self.block = nn.Sequential(*_conv_bn_prelu(cin, hidden, 1, 1, 0),
                                   *_conv_bn_prelu(hidden, hidden, 3, stride, 1, groups=hidden),
                                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    @property
    def convs(self) -> list[nn.Module]:
        return [self.block[0], self.block[3]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class MobileFaceNetS(nn.Module):
    """MobileFaceNet-style network: stride-4 stem, depthwise bottlenecks, global depthwise conv head."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128), embedding_size: int = 128):
        super().__init__()
        w = widths
        self.stem = nn.Sequential(*_conv_bn_prelu(3, w[0], 4, 4, 0))
        self.body = nn.Sequential(DepthwiseBottleneck(w[0], w[1], 2), DepthwiseBottleneck(w[1], w[1], 1),
                                  DepthwiseBottleneck(w[1], w[2], 2), DepthwiseBottleneck(w[2], w[2], 1))
        self.head = nn.Sequential(*_conv_bn_prelu(w[2], w[3], 1, 1, 0),
                                  nn.Conv2d(w[3], w[3], 7, 1, 0, groups=w[3], bias=False), nn.BatchNorm2d(w[3]),
                                  nn.Flatten(), nn.Linear(w[3], embedding_size), nn.BatchNorm1d(embedding_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x)))

    def dfanet_sites(self) -> list[nn.Module]:
        return [self.stem[0]] + [c for blk in self.body for c in blk.convs]


BACKBONES: dict[str, type[nn.Module]] = {"resnet": ResNetS, "mobilefacenet": MobileFaceNetS}


def get_backbone(name: str, embedding_size: int = 128) -> nn.Module:
    """Build a backbone by name (see :data:`BACKBONES`)."""
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name](embedding_size=embedding_size)
