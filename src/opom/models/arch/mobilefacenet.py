"""insightface ``arcface_torch`` MobileFaceNet (``mbf`` / ``mbf_large``), key-for-key compatible with its checkpoints.

Module names follow ``recognition/arcface_torch/backbones/mobilefacenet.py`` in deepinsight/insightface:
``layers`` is a list of blocks — ``0`` a stride-2 :class:`ConvBlock`, ``1`` a grouped 3x3 :class:`ConvBlock`
(``blocks[0] == 1``) or a :class:`Residual`, then stride-2 :class:`DepthWise` / :class:`Residual` pairs at
``2..7`` — followed by ``conv_sep`` (1x1 ConvBlock to 512) and ``features`` (:class:`GDC`: 7x7 depthwise
LinearBlock, Flatten, Linear without bias, BatchNorm1d). Every ConvBlock / LinearBlock keeps its conv, BN (and
PReLU) in a Sequential called ``layers``, so keys read e.g. ``layers.0.layers.0.weight``,
``layers.3.layers.0.layers.1.layers.0.weight``, ``features.layers.2.weight``.

Preprocessing (the zoo entry declares it) is arcface_torch's: 112x112 aligned RGB, ``(x/255 - 0.5) / 0.5``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from opom.models.arch.checkpoint import CheckpointError, build_empty, load_into, looks_like, read_state


class ConvBlock(nn.Module):
    """Conv (no bias) - BN - PReLU."""

    def __init__(self, in_c: int, out_c: int, kernel=(1, 1), stride=(1, 1), padding=(0, 0), groups: int = 1):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_c, out_c, kernel, stride=stride, padding=padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_c), nn.PReLU(out_c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class LinearBlock(nn.Module):
    """Conv (no bias) - BN, no activation."""

    def __init__(self, in_c: int, out_c: int, kernel=(1, 1), stride=(1, 1), padding=(0, 0), groups: int = 1):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_c, out_c, kernel, stride=stride, padding=padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DepthWise(nn.Module):
    """Inverted bottleneck: 1x1 to ``groups`` channels, depthwise ``kernel`` (stride), 1x1 linear projection."""

    def __init__(self, in_c: int, out_c: int, residual: bool = False, kernel=(3, 3), stride=(2, 2), padding=(1, 1),
                 groups: int = 1):
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(in_c, groups, kernel=(1, 1), stride=(1, 1), padding=(0, 0)),
            ConvBlock(groups, groups, kernel=kernel, stride=stride, padding=padding, groups=groups),
            LinearBlock(groups, out_c, kernel=(1, 1), stride=(1, 1), padding=(0, 0)))

    @property
    def convs(self) -> list[nn.Module]:
        return [blk.layers[0] for blk in self.layers]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(x)
        return x + y if self.residual else y


class Residual(nn.Module):
    """``num_block`` residual :class:`DepthWise` units at constant width."""

    def __init__(self, c: int, num_block: int, groups: int, kernel=(3, 3), stride=(1, 1), padding=(1, 1)):
        super().__init__()
        self.layers = nn.Sequential(*(DepthWise(c, c, True, kernel, stride, padding, groups) for _ in range(num_block)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class GDC(nn.Module):
    """Global depthwise conv head: 7x7 depthwise LinearBlock, Flatten, Linear(512 -> D, no bias), BatchNorm1d."""

    def __init__(self, embedding_size: int):
        super().__init__()
        self.layers = nn.Sequential(
            LinearBlock(512, 512, kernel=(7, 7), stride=(1, 1), padding=(0, 0), groups=512),
            nn.Flatten(), nn.Linear(512, embedding_size, bias=False), nn.BatchNorm1d(embedding_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class MobileFaceNet(nn.Module):
    """arcface_torch MobileFaceNet; ``blocks`` are the residual units per stage, ``scale`` the width multiplier."""

    def __init__(self, fp16: bool = False, num_features: int = 512, blocks: tuple[int, ...] = (1, 4, 6, 2),
                 scale: int = 2):
        super().__init__()
        if len(blocks) != 4:
            raise ValueError(f"MobileFaceNet needs 4 stage depths, got {blocks!r}")
        self.fp16, self.scale, self.blocks = fp16, scale, tuple(blocks)
        c1, c2 = 64 * scale, 128 * scale
        self.layers = nn.ModuleList([ConvBlock(3, c1, kernel=(3, 3), stride=(2, 2), padding=(1, 1))])
        if blocks[0] == 1:
            self.layers.append(ConvBlock(c1, c1, kernel=(3, 3), stride=(1, 1), padding=(1, 1), groups=64))
        else:
            self.layers.append(Residual(c1, blocks[0], groups=128, kernel=(3, 3), stride=(1, 1), padding=(1, 1)))
        self.layers.extend([
            DepthWise(c1, c1, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=128),
            Residual(c1, blocks[1], groups=128, kernel=(3, 3), stride=(1, 1), padding=(1, 1)),
            DepthWise(c1, c2, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=256),
            Residual(c2, blocks[2], groups=256, kernel=(3, 3), stride=(1, 1), padding=(1, 1)),
            DepthWise(c2, c2, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=512),
            Residual(c2, blocks[3], groups=256, kernel=(3, 3), stride=(1, 1), padding=(1, 1)),
        ])
        self.conv_sep = ConvBlock(c2, 512, kernel=(1, 1), stride=(1, 1), padding=(0, 0))
        self.features = GDC(num_features)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def dfanet_sites(self) -> list[nn.Module]:
        """DFANet dropout sites: the input conv and every conv inside a residual (skip-connected) unit."""
        units = [u for blk in self.layers if isinstance(blk, Residual) for u in blk.layers]
        return [self.layers[0].layers[0]] + [c for u in units for c in u.convs]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.fp16 and x.is_cuda  # arcface_torch's mixed precision: the trunk in fp16, the head in fp32
        with torch.autocast("cuda") if half else contextlib.nullcontext():
            for block in self.layers:
                x = block(x)
        x = self.conv_sep(x.float() if half else x)
        return self.features(x)


def get_mbf(fp16: bool = False, num_features: int = 512, blocks=(1, 4, 6, 2), scale: int = 2) -> MobileFaceNet:
    """arcface_torch ``mbf``."""
    return MobileFaceNet(fp16, num_features, blocks, scale)


def get_mbf_large(fp16: bool = False, num_features: int = 512, blocks=(2, 8, 12, 4), scale: int = 4) -> MobileFaceNet:
    """arcface_torch ``mbf_large``."""
    return MobileFaceNet(fp16, num_features, blocks, scale)


def _units(state: Mapping[str, torch.Tensor], index: int) -> int:
    pattern = re.compile(rf"^layers\.{index}\.layers\.(\d+)\.layers\.0\.layers\.0\.weight$")
    found = [int(m.group(1)) for k in state if (m := pattern.match(k))]
    return max(found) + 1 if found else 0


def infer_mobilefacenet(state: Mapping[str, torch.Tensor]) -> dict:
    """``MobileFaceNet`` keyword arguments (``num_features``, ``blocks``, ``scale``) matching a state dict."""
    stem = state.get("layers.0.layers.0.weight")
    head = state.get("features.layers.2.weight")
    if stem is None or head is None or stem.dim() != 4 or head.dim() != 2:
        raise CheckpointError("not an arcface_torch MobileFaceNet state dict (it lacks layers.0.layers.0.weight or "
                              "features.layers.2.weight)")
    first = 1 if "layers.1.layers.0.weight" in state else _units(state, 1)
    blocks = (first, _units(state, 3), _units(state, 5), _units(state, 7))
    return {"num_features": int(head.shape[0]), "blocks": blocks, "scale": int(stem.shape[0]) // 64}


def load_mobilefacenet(checkpoint: str | Path | Mapping, **kwargs) -> MobileFaceNet:
    """Build the MobileFaceNet an arcface_torch checkpoint describes and load it (strict; eval mode).

    ``num_features``, ``blocks`` and ``scale`` are inferred from the checkpoint unless given.
    """
    state, origin = read_state(checkpoint)
    try:
        inferred = infer_mobilefacenet(state)
    except CheckpointError as err:
        raise CheckpointError(f"{origin}: {err}.{looks_like(state)}") from None
    config = {**inferred, **kwargs}
    model = build_empty(MobileFaceNet, **config)
    arch = f"arcface_torch MobileFaceNet(blocks={tuple(config['blocks'])}, scale={config['scale']})"
    return load_into(model, state, arch, origin=origin)  # type: ignore[return-value]
