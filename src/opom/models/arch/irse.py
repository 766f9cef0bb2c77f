"""face.evoLVe IR / IR-SE networks (IR_50, IR_SE_50, 100- and 152-layer configs) — the OPOM surrogates' format.

Module names follow face.evoLVe's ``backbone/model_irse.py`` (the copy in zhongyy/OPOM
``code/generation/backbone/model_irse.py``), so ``torch.save(model.state_dict())`` files from there load
strictly:

* ``input_layer``: ``0`` Conv3x3(3->64), ``1`` BN, ``2`` PReLU;
* ``body``: one unit per residual block, each with ``shortcut_layer`` (``MaxPool2d(1, stride)`` — no weights —
  when the channel count is unchanged, else ``0`` Conv1x1(stride) + ``1`` BN) and ``res_layer``: ``0`` BN,
  ``1`` Conv3x3, ``2`` PReLU, ``3`` Conv3x3(stride), ``4`` BN, and for IR-SE ``5`` an SE module (``fc1``,
  ``fc2`` 1x1 convs, reduction 16);
* ``output_layer``: ``0`` BN2d, ``1`` Dropout, ``2`` Flatten, ``3`` Linear(512*7*7 -> 512), ``4`` BN1d.

OPOM's DFANet surrogate (``model_irse_drop.py``) is the same network with Dropout modules added after the input
conv and after both convs of each unit, which shifts the state-dict indices (``input_layer``: conv 0, BN 2,
PReLU 3; ``res_layer``: BN 0, conv 1, PReLU 3, conv 4, BN 6). Here there is one architecture: :class:`IRSE`
loads both layouts (:func:`load_irse` detects the shifted one and remaps it with :func:`remap_dfanet_to_evolve`)
and exposes :meth:`IRSE.dfanet_sites` so DFANet's dropout is applied by hooks instead of extra modules.

Preprocessing (the zoo entry declares it): the OPOM / face.evoLVe checkpoints expect 112x112 aligned RGB on the 0..255
scale transformed as ``(x - 127.5) * 0.078125`` (``model_irse.py`` does this inside ``forward``; here the
caller does). On [0, 1] images that is mean 0.5, std 12.8/255.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from opom.models.arch.checkpoint import CheckpointError, StateDict, build_empty, load_into, looks_like, read_state

# (in_channels, depth, units) per stage; the first unit of every stage has stride 2
STAGES: dict[int, tuple[tuple[int, int, int], ...]] = {
    50: ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3)),
    100: ((64, 64, 3), (64, 128, 13), (128, 256, 30), (256, 512, 3)),
    152: ((64, 64, 3), (64, 128, 8), (128, 256, 36), (256, 512, 3)),
}


class SEModule(nn.Module):
    """Squeeze-and-excitation with 1x1 convs ``fc1`` / ``fc2`` (no bias), as in face.evoLVe."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, padding=0, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, padding=0, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))


class BottleneckIR(nn.Module):
    """An IR unit (``bottleneck_IR``), or with ``se=True`` an IR-SE unit (``bottleneck_IR_SE``)."""

    def __init__(self, in_channel: int, depth: int, stride: int, se: bool = False):
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_channel, depth, (1, 1), stride, bias=False),
                                                nn.BatchNorm2d(depth))
        res: list[nn.Module] = [nn.BatchNorm2d(in_channel), nn.Conv2d(in_channel, depth, (3, 3), (1, 1), 1, bias=False),
                                nn.PReLU(depth), nn.Conv2d(depth, depth, (3, 3), stride, 1, bias=False),
                                nn.BatchNorm2d(depth)]
        if se:
            res.append(SEModule(depth, 16))
        self.res_layer = nn.Sequential(*res)

    @property
    def convs(self) -> list[nn.Module]:
        return [self.res_layer[1], self.res_layer[3]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IRSE(nn.Module):
    """face.evoLVe ``Backbone``: IR (``mode='ir'``) or IR-SE (``mode='ir_se'``) with 50, 100 or 152 layers."""

    def __init__(self, num_layers: int = 50, mode: str = "ir", input_size: int | tuple[int, int] = 112):
        super().__init__()
        size = input_size[0] if isinstance(input_size, (tuple, list)) else input_size
        if size not in (112, 224):
            raise ValueError(f"input_size must be 112 or 224, got {input_size!r}")
        if num_layers not in STAGES:
            raise ValueError(f"num_layers must be one of {sorted(STAGES)}, got {num_layers!r}")
        if mode not in ("ir", "ir_se"):
            raise ValueError(f"mode must be 'ir' or 'ir_se', got {mode!r}")
        self.num_layers, self.mode, self.input_size = num_layers, mode, size
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, (3, 3), 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        units = []
        for cin, depth, n in STAGES[num_layers]:
            units.append(BottleneckIR(cin, depth, 2, se=mode == "ir_se"))
            units += [BottleneckIR(depth, depth, 1, se=mode == "ir_se") for _ in range(n - 1)]
        self.body = nn.Sequential(*units)
        side = size // 16
        self.output_layer = nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(), nn.Flatten(),
                                          nn.Linear(512 * side * side, 512), nn.BatchNorm1d(512))
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def dfanet_sites(self) -> list[nn.Module]:
        """Where OPOM's ``model_irse_drop.py`` has Dropout: after the input conv and both convs of every unit."""
        return [self.input_layer[0]] + [c for unit in self.body for c in unit.convs]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_layer(self.body(self.input_layer(x)))


# face.evoLVe's constructor names
def IR_50(input_size: int | tuple[int, int] = 112) -> IRSE:
    return IRSE(50, "ir", input_size)


def IR_101(input_size: int | tuple[int, int] = 112) -> IRSE:
    return IRSE(100, "ir", input_size)


def IR_152(input_size: int | tuple[int, int] = 112) -> IRSE:
    return IRSE(152, "ir", input_size)


def IR_SE_50(input_size: int | tuple[int, int] = 112) -> IRSE:
    return IRSE(50, "ir_se", input_size)


def IR_SE_101(input_size: int | tuple[int, int] = 112) -> IRSE:
    return IRSE(100, "ir_se", input_size)


def IR_SE_152(input_size: int | tuple[int, int] = 112) -> IRSE:
    return IRSE(152, "ir_se", input_size)


IRSE_MODELS: dict[str, Callable[..., IRSE]] = {
    "IR_50": IR_50, "IR_101": IR_101, "IR_152": IR_152,
    "IR_SE_50": IR_SE_50, "IR_SE_101": IR_SE_101, "IR_SE_152": IR_SE_152,
}

# ---- the DFANet (model_irse_drop.py) key layout ----------------------------------------------------------------

# plain index -> dropout-variant index. res_layer 5 (an SE module) has no counterpart in OPOM's file, which only
# defines IR units; it is mapped past the last BN so that an IR-SE variant built the same way would also round-trip.
_INPUT_TO_DROP = {0: 0, 1: 2, 2: 3}
_RES_TO_DROP = {0: 0, 1: 1, 2: 3, 3: 4, 4: 6, 5: 7}
_INPUT_KEY = re.compile(r"^input_layer\.(\d+)\.(.+)$")
_RES_KEY = re.compile(r"^(body\.\d+\.res_layer)\.(\d+)\.(.+)$")


def _remap(state: Mapping[str, torch.Tensor], input_map: dict[int, int], res_map: dict[int, int],
           layout: str) -> StateDict:
    out: StateDict = {}
    for key, value in state.items():
        new = key
        if m := _INPUT_KEY.match(key):
            idx = int(m.group(1))
            if idx not in input_map:
                raise CheckpointError(f"{key!r} has no counterpart in the {layout} layout")
            new = f"input_layer.{input_map[idx]}.{m.group(2)}"
        elif m := _RES_KEY.match(key):
            idx = int(m.group(2))
            if idx not in res_map:
                raise CheckpointError(f"{key!r} has no counterpart in the {layout} layout")
            new = f"{m.group(1)}.{res_map[idx]}.{m.group(3)}"
        out[new] = value
    return out


def remap_evolve_to_dfanet(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Rename a plain face.evoLVe state dict to the layout of OPOM's ``model_irse_drop.py``."""
    return _remap(state, _INPUT_TO_DROP, _RES_TO_DROP, "DFANet (model_irse_drop)")


def remap_dfanet_to_evolve(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Rename a state dict saved from OPOM's ``model_irse_drop.py`` to the plain face.evoLVe layout."""
    return _remap(state, {v: k for k, v in _INPUT_TO_DROP.items()}, {v: k for k, v in _RES_TO_DROP.items()},
                  "face.evoLVe (model_irse)")


def is_dfanet_layout(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``state`` has the dropout variant's shifted indices (``input_layer.3`` PReLU, ``res_layer.6`` BN)."""
    return "input_layer.3.weight" in state or any(".res_layer.6." in k for k in state)


_UNIT_KEY = re.compile(r"^body\.(\d+)\.")
_UNITS_TO_LAYERS = {sum(n for _, _, n in stages): layers for layers, stages in STAGES.items()}


def infer_irse(state: Mapping[str, torch.Tensor]) -> tuple[int, str, int]:
    """``(num_layers, mode, input_size)`` of the face.evoLVe network a (plain-layout) state dict belongs to."""
    units = {int(m.group(1)) for k in state if (m := _UNIT_KEY.match(k))}
    count = max(units) + 1 if units else 0
    if count not in _UNITS_TO_LAYERS:
        raise CheckpointError(f"a face.evoLVe IR network has {sorted(_UNITS_TO_LAYERS)} body units, this state dict "
                              f"has {count}")
    mode = "ir_se" if any(".fc1." in k for k in state) else "ir"
    linear = state.get("output_layer.3.weight")
    size = 224 if linear is not None and linear.dim() == 2 and linear.shape[1] == 512 * 14 * 14 else 112
    return _UNITS_TO_LAYERS[count], mode, size


def load_irse(checkpoint: str | Path | Mapping, name: str | None = None) -> IRSE:
    """Build and load a face.evoLVe IR / IR-SE network (strict; eval mode).

    Accepts plain ``model_irse.py`` checkpoints and ones saved from OPOM's ``model_irse_drop.py`` (remapped).
    ``name`` ('IR_50', 'IR_SE_50', ...) is inferred from the checkpoint when omitted.
    """
    state, origin = read_state(checkpoint)
    if is_dfanet_layout(state):
        state = remap_dfanet_to_evolve(state)
        origin += " (DFANet dropout layout, remapped)"
    if name is None:
        try:
            num_layers, mode, size = infer_irse(state)
        except CheckpointError as err:
            raise CheckpointError(f"{origin} is not a face.evoLVe IR network: {err}.{looks_like(state)}") from None
        model = build_empty(IRSE, num_layers, mode, size)
        name = f"{'IR_SE' if mode == 'ir_se' else 'IR'}_{num_layers if num_layers != 100 else 101}"
    elif name in IRSE_MODELS:
        linear = state.get("output_layer.3.weight")
        size = 224 if linear is not None and linear.dim() == 2 and linear.shape[1] == 512 * 14 * 14 else 112
        model = build_empty(IRSE_MODELS[name], size)
    else:
        raise CheckpointError(f"unknown face.evoLVe network {name!r}; choose one of {sorted(IRSE_MODELS)}")
    return load_into(model, state, f"face.evoLVe {name}", origin=origin)  # type: ignore[return-value]
