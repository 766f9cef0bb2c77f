"""Training heads for face recognition: each maps (embeddings, labels) to a scalar loss.

``MarginHead`` is insightface's combined-margin family: ``s * (cos(m1 * theta + m2) - m3)`` for the target
class and ``s * cos(theta)`` for the others, on L2-normalised embeddings and class weights; SphereFace
(m1), ArcFace (m2) and CosFace (m3) are its special cases. ``SoftmaxHead`` is the plain fully-connected
softmax classifier. ``SFaceHead`` is the sigmoid-constrained hypersphere loss (Zhong et al., TIP 2021),
the loss of one of the paper's black-box targets.
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
        return F.cross_entropy(self.fc(emb), labels)


class MarginHead(nn.Module):
    def __init__(self, embedding_size: int, num_classes: int, scale: float = 32.0,
                 m1: float = 1.0, m2: float = 0.0, m3: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, embedding_size) * 0.01)
        self.scale, self.m1, self.m2, self.m3 = scale, m1, m2, m3

    def logits(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = F.linear(F.normalize(emb), F.normalize(self.weight)).clamp(-1 + 1e-7, 1 - 1e-7)
        target = cos.gather(1, labels[:, None])
        theta = torch.acos(target)
        margin = torch.cos(self.m1 * theta + self.m2) - self.m3
        # keep the target logit monotonic in theta past pi - m2 (the usual "easy margin" fallback)
        fallback = target - self.m3 - self.m2 * math.sin(self.m2)
        margin = torch.where(self.m1 * theta + self.m2 < math.pi, margin, fallback)
        return self.scale * cos.scatter(1, labels[:, None], margin)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(emb, labels), labels)


class SFaceHead(nn.Module):
    """Sigmoid-constrained hypersphere loss: intra-class pull and inter-class push re-weighted by sigmoids.

    ``loss = s * mean( -w_y * cos(theta_y) + sum_{j != y} w_j * cos(theta_j) )`` with the weights
    ``w_y = sigmoid(-k (theta_y - a))`` and ``w_j = sigmoid(k (theta_j - b))`` held constant (no gradient).
    """

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 64.0, k: float = 80.0,
                 a: float = 0.8, b: float = 1.22):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, embedding_size) * 0.01)
        self.scale, self.k, self.a, self.b = scale, k, a, b

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = F.linear(F.normalize(emb), F.normalize(self.weight)).clamp(-1 + 1e-7, 1 - 1e-7)
        theta = torch.acos(cos).detach()
        target = F.one_hot(labels, cos.shape[1]).bool()
        w_intra = torch.sigmoid(-self.k * (theta - self.a))
        w_inter = torch.sigmoid(self.k * (theta - self.b))
        intra = -(w_intra * cos)[target]
        inter = (w_inter * cos).masked_fill(target, 0).sum(1)
        return self.scale * (intra + inter).mean()


# loss name -> (head class, default keyword arguments); keyword arguments can be overridden by configs
HEADS: dict[str, tuple[type[nn.Module], dict]] = {
    "softmax": (SoftmaxHead, {}),
    "sphereface": (MarginHead, {"m1": 1.35}),
    "cosface": (MarginHead, {"m3": 0.35}),
    "arcface": (MarginHead, {"m2": 0.5}),
    "sface": (SFaceHead, {}),
}


def get_head(loss: str, embedding_size: int, num_classes: int, **overrides) -> nn.Module:
    """The training head of ``loss``; ``overrides`` replace its defaults (e.g. ``scale=64, m2=0.4``)."""
    if loss not in HEADS:
        raise ConfigError(f"unknown training loss {loss!r}; choose one of {sorted(HEADS)}")
    cls, defaults = HEADS[loss]
    return cls(embedding_size, num_classes, **{**defaults, **overrides})
