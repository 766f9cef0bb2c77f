"""Classification heads for face-recognition training (insightface's combined-margin family).

``MarginHead`` computes ``s * (cos(m1 * theta + m2) - m3)`` for the target class and ``s * cos(theta)``
for the others on L2-normalised embeddings and class weights: SphereFace (m1), ArcFace (m2) and CosFace
(m3) are its special cases. ``SoftmaxHead`` is the plain fully-connected softmax classifier.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from opom.errors import ConfigError


class SoftmaxHead(nn.Module):
    def __init__(self, embedding_size: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(embedding_size, num_classes)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.fc(emb)


class MarginHead(nn.Module):
    def __init__(self, embedding_size: int, num_classes: int, scale: float = 32.0,
                 m1: float = 1.0, m2: float = 0.0, m3: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, embedding_size) * 0.01)
        self.scale, self.m1, self.m2, self.m3 = scale, m1, m2, m3

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = F.linear(F.normalize(emb), F.normalize(self.weight)).clamp(-1 + 1e-7, 1 - 1e-7)
        target = cos.gather(1, labels[:, None])
        theta = torch.acos(target)
        margin = torch.cos(self.m1 * theta + self.m2) - self.m3
        # keep the target logit monotonic in theta past pi - m2 (the usual "easy margin" fallback)
        fallback = target - self.m3 - self.m2 * math.sin(self.m2)
        margin = torch.where(self.m1 * theta + self.m2 < math.pi, margin, fallback)
        return self.scale * cos.scatter(1, labels[:, None], margin)


# loss name -> head factory (embedding_size, num_classes)
HEADS = {
    "softmax": lambda d, c: SoftmaxHead(d, c),
    "sphereface": lambda d, c: MarginHead(d, c, m1=1.35),
    "cosface": lambda d, c: MarginHead(d, c, m3=0.35),
    "arcface": lambda d, c: MarginHead(d, c, m2=0.5),
}


def get_head(loss: str, embedding_size: int, num_classes: int) -> nn.Module:
    if loss not in HEADS:
        raise ConfigError(f"unknown training loss {loss!r}; choose one of {sorted(HEADS)}")
    return HEADS[loss](embedding_size, num_classes)
