"""face-api's face recognition net (a TensorFlow.js port of dlib's ResNet face descriptor) as a torch module.

``@vladmandic/face-api`` stores this network in the TFJS *layers* weight format: a weights manifest and a binary
shard (mostly uint8-quantised), with the architecture in face-api's JavaScript rather than in the files. This module
writes that architecture out, layer for layer as face-api's ``FaceRecognitionNet.forwardInput`` runs it, and loads
the manifest's tensors into it (decoded by :func:`opom.models.tfjs.read_weights`):

- input 150x150 RGB, 0..255; minus the mean RGB (122.782, 117.001, 104.298), divided by 255 (done by the zoo
  wrapper's preprocessing, not here);
- ``conv32_down``: 7x7 conv stride 2 (VALID) + per-channel scale and bias + ReLU, then 3x3 max pooling stride 2;
- residual blocks of two 3x3 convs (SAME) with scale layers; the ``*_down`` blocks start with a stride-2 VALID conv
  and add an average-pooled (2x2) shortcut, zero-padded in channels (and at the bottom/right when sizes differ);
- mean over space, then a 256 -> 128 matrix: the 128-d descriptor (same person when the L2 distance < 0.6, as dlib).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from opom.models.tfjs import TfjsError, read_weights

MANIFEST = "face_recognition_model-weights_manifest.json"
MEAN_RGB = (122.782, 117.001, 104.298)
INPUT_SIZE = 150

# (name, output channels, down) of the residual blocks, in order
_BLOCKS = [("conv32_1", 32, False), ("conv32_2", 32, False), ("conv32_3", 32, False),
           ("conv64_down", 64, True), ("conv64_1", 64, False), ("conv64_2", 64, False), ("conv64_3", 64, False),
           ("conv128_down", 128, True), ("conv128_1", 128, False), ("conv128_2", 128, False),
           ("conv256_down", 256, True), ("conv256_1", 256, False), ("conv256_2", 256, False),
           ("conv256_down_out", 256, True)]


class ScaledConv(nn.Module):
    """conv (+ bias) then a per-channel affine ``scale`` layer; ``down``: stride 2 and TF's VALID padding."""

    def __init__(self, cin: int, cout: int, kernel: int, down: bool):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=2 if down else 1, padding=0 if down else kernel // 2)
        self.scale = nn.Parameter(torch.ones(cout))
        self.shift = nn.Parameter(torch.zeros(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * self.scale[:, None, None] + self.shift[:, None, None]


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, down: bool):
        super().__init__()
        self.down = down
        self.conv1 = ScaledConv(cin, cout, 3, down)
        self.conv2 = ScaledConv(cout, cout, 3, False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(x)))
        if not self.down:
            return F.relu(y + x)
        shortcut = F.avg_pool2d(x, 2, 2)
        if shortcut.shape[-2:] != y.shape[-2:]:  # face-api pads the residual branch at the bottom / right
            y = F.pad(y, (0, shortcut.shape[-1] - y.shape[-1], 0, shortcut.shape[-2] - y.shape[-2]))
        if shortcut.shape[1] != y.shape[1]:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, y.shape[1] - shortcut.shape[1]))
        return F.relu(y + shortcut)

    def dfanet_sites(self) -> list[nn.Module]:
        return [self.conv1, self.conv2]


class FaceApiResNet(nn.Module):
    """face-api's ``FaceRecognitionNet``: (B, 3, 150, 150) normalised RGB -> (B, 128) descriptors."""

    def __init__(self):
        super().__init__()
        self.stem = ScaledConv(3, 32, 7, down=True)
        blocks, cin = [], 32
        for _, cout, down in _BLOCKS:
            blocks.append(ResidualBlock(cin, cout, down))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(256, 128, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2)
        return self.fc(self.blocks(x).mean(dim=(2, 3)))

    def dfanet_sites(self) -> list[nn.Module]:
        return [self.stem] + [site for block in self.blocks for site in block.dfanet_sites()]


def _layer(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    filters = weights[f"{prefix}/conv/filters"]  # TF (kh, kw, cin, cout)
    return {"conv.weight": filters.permute(3, 2, 0, 1), "conv.bias": weights[f"{prefix}/conv/bias"],
            "scale": weights[f"{prefix}/scale/weights"], "shift": weights[f"{prefix}/scale/biases"]}


def load_faceapi_resnet(folder: str | Path) -> FaceApiResNet:
    """Build :class:`FaceApiResNet` from face-api's weights manifest and shard in ``folder`` (strict key check)."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise TfjsError(f"{MANIFEST} is not in {str(folder)!r} (face-api's model folder)")
    weights = read_weights(json.loads(manifest.read_text()), folder)
    net = FaceApiResNet()
    state: dict[str, torch.Tensor] = {}
    try:
        for key, value in _layer(weights, "conv32_down").items():
            state[f"stem.{key}"] = value
        for i, (name, _, _) in enumerate(_BLOCKS):
            for conv in ("conv1", "conv2"):
                for key, value in _layer(weights, f"{name}/{conv}").items():
                    state[f"blocks.{i}.{conv}.{key}"] = value
        state["fc.weight"] = weights["fc"].t()  # TF (256, 128) for x @ W
    except KeyError as err:
        raise TfjsError(f"face-api weights lack {err.args[0]!r}: not the face recognition model?") from None
    if len(weights) != 4 + 8 * len(_BLOCKS) + 1:
        raise TfjsError(f"face-api weights hold {len(weights)} tensors, not those of the face recognition model")
    net.load_state_dict({k: v.contiguous() for k, v in state.items()}, strict=True)
    return net.eval()
