"""insightface ``arcface_torch`` IResNet-18/34/50/100/200, key-for-key compatible with its ``backbone.pth`` files.

Module names follow ``recognition/arcface_torch/backbones/iresnet.py`` in deepinsight/insightface, so a
published checkpoint loads with ``strict=True``: ``conv1``, ``bn1``, ``prelu`` (stem), ``layer1``..``layer4``
of :class:`IBasicBlock` (``bn1, conv1, bn2, prelu, conv2, bn3`` and, on the first block of each stage,
``downsample.0`` conv1x1 + ``downsample.1`` BN), then ``bn2``, ``dropout``, ``fc`` (512*7*7 -> D) and
``features`` (a BatchNorm1d whose scale is frozen at 1).

Preprocessing (the zoo entry declares it): 112x112 aligned RGB, ``(x/255 - 0.5) / 0.5`` — i.e. mean 0.5, std 0.5
on [0, 1] images. The caller applies it; ``forward`` takes the normalised tensor.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from opom.models.arch.checkpoint import CheckpointError, build_empty, load_into, looks_like, read_state

# blocks per stage of each published depth
LAYERS: dict[str, tuple[int, int, int, int]] = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
    "iresnet200": (6, 26, 60, 6),
}
# arcface_torch's get_model() names
ALIASES = {"r18": "iresnet18", "r34": "iresnet34", "r50": "iresnet50", "r100": "iresnet100", "r200": "iresnet200"}


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Improved residual unit: BN - conv3x3 - BN - PReLU - conv3x3(stride) - BN, added to the shortcut."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)  # the stride sits on the second conv
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class IResNet(nn.Module):
    """The arcface_torch IResNet. ``layers`` gives the blocks per stage (see :data:`LAYERS`)."""

    fc_scale = 7 * 7

    def __init__(self, layers: tuple[int, ...] | list[int], dropout: float = 0.0, num_features: int = 512,
                 fp16: bool = False):
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"IResNet needs 4 stage depths, got {layers!r}")
        self.fp16 = fp16
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1])
        self.layer3 = self._make_layer(256, layers[2])
        self.layer4 = self._make_layer(512, layers[3])
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(512 * self.fc_scale, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)
        self._init_weights()

    def _make_layer(self, planes: int, blocks: int, stride: int = 2) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes, eps=1e-5))
        units = [IBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        units += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*units)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.ones_(self.features.weight)
        self.features.weight.requires_grad = False

    def blocks(self) -> list[IBasicBlock]:
        return [b for stage in (self.layer1, self.layer2, self.layer3, self.layer4) for b in stage]

    def dfanet_sites(self) -> list[nn.Module]:
        """Where DFANet puts dropout: the input conv and both convs of every residual block."""
        return [self.conv1] + [c for b in self.blocks() for c in (b.conv1, b.conv2)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.fp16 and x.is_cuda  # arcface_torch's mixed precision: the trunk in fp16, fc and BN in fp32
        with torch.autocast("cuda") if half else contextlib.nullcontext():
            x = self.prelu(self.bn1(self.conv1(x)))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            x = self.dropout(torch.flatten(self.bn2(x), 1))
        x = self.fc(x.float() if half else x)
        return self.features(x)


def _builder(name: str) -> Callable[..., IResNet]:
    def build(**kwargs) -> IResNet:
        return IResNet(LAYERS[name], **kwargs)

    build.__name__ = name
    build.__doc__ = f"arcface_torch {name}: stages {LAYERS[name]}; kwargs go to :class:`IResNet`."
    return build


iresnet18 = _builder("iresnet18")
iresnet34 = _builder("iresnet34")
iresnet50 = _builder("iresnet50")
iresnet100 = _builder("iresnet100")
iresnet200 = _builder("iresnet200")

IRESNETS: dict[str, Callable[..., IResNet]] = {
    "iresnet18": iresnet18,
    "iresnet34": iresnet34,
    "iresnet50": iresnet50,
    "iresnet100": iresnet100,
    "iresnet200": iresnet200,
}

_BLOCK_KEY = re.compile(r"^layer([1-4])\.(\d+)\.conv1\.weight$")


def infer_iresnet(state: Mapping[str, torch.Tensor]) -> str:
    """The IResNet depth (a key of :data:`IRESNETS`) whose stage layout ``state`` has."""
    counts = [0, 0, 0, 0]
    for key in state:
        m = _BLOCK_KEY.match(key)
        if m:
            stage = int(m.group(1)) - 1
            counts[stage] = max(counts[stage], int(m.group(2)) + 1)
    for name, layers in LAYERS.items():
        if tuple(counts) == layers:
            return name
    raise CheckpointError(f"no IResNet depth has {tuple(counts)} blocks per stage (known: "
                          f"{', '.join(f'{n} {v}' for n, v in LAYERS.items())})")


def load_iresnet(checkpoint: str | Path | Mapping, name: str | None = None, **kwargs) -> IResNet:
    """Build the IResNet a ``backbone.pth`` describes and load it (strict; eval mode).

    ``name`` ('iresnet50' or arcface_torch's 'r50', ...) is inferred from the checkpoint when omitted, and so
    is ``num_features`` (from ``fc.weight``).
    """
    state, origin = read_state(checkpoint)
    if name is None:
        try:
            name = infer_iresnet(state)
        except CheckpointError as err:
            raise CheckpointError(f"{origin} is not an arcface_torch IResNet: {err}.{looks_like(state)}") from None
    name = ALIASES.get(name, name)
    if name not in IRESNETS:
        raise CheckpointError(f"unknown IResNet {name!r}; choose one of {sorted(IRESNETS) + sorted(ALIASES)}")
    fc = state.get("fc.weight")
    if "num_features" not in kwargs and fc is not None and fc.dim() == 2:
        kwargs["num_features"] = fc.shape[0]
    model = build_empty(IRESNETS[name], **kwargs)
    return load_into(model, state, f"arcface_torch {name}", origin=origin)  # type: ignore[return-value]
