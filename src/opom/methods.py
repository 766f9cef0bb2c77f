"""The OPOM objectives and their baselines behind one small interface.

Every method maps L2-normalised features of the perturbed images ``adv`` (B, N, D) and of the clean
images ``clean`` (B, N, D) — B identities, N mask-training images each — to one loss per identity (B,)
that the attack ASCENDS. Identities never mix, so batching them is exact. Where a projection onto the
identity's feature subspace is needed it is computed exactly (closed form or batched QP, see
:mod:`opom.subspace`) and detached: by Danskin's theorem the gradient of the squared point-to-set
distance is then exact, as in the reference (which solved one cvxpy problem per sample instead).

"MSE" means the mean over all N x D entries, as ``torch.nn.MSELoss`` in the reference.
"""

from __future__ import annotations

import torch

from opom.errors import ConfigError
from opom.subspace import convex_hull_weights, project_affine


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).pow(2).mean(dim=(1, 2))


class Method:
    """Base class: ``loss(adv, clean, iteration) -> (B,)``, ascended by the attack."""

    name: str = "method"
    crafts: bool = True  # False for masks that need no optimisation (random noise)

    def loss(self, adv: torch.Tensor, clean: torch.Tensor, iteration: int) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class FIUAP(Method):
    """FI-UAP (baseline): push each image's feature away from its own clean feature, MSE(a_i, c_i)."""

    name = "fi_uap"

    def loss(self, adv, clean, iteration):
        return _mse(adv, clean)


class FIUAPPlus(Method):
    """FI-UAP+ (baseline): lower the mean cosine similarity to all clean features, -mean_{i,k} <a_i, c_k>."""

    name = "fi_uap_plus"

    def loss(self, adv, clean, iteration):
        return -torch.einsum("bid,bkd->bik", adv, clean).mean(dim=(1, 2))


class ClassCenter(Method):
    """OPOM-ClassCenter: MSE(a_i, mu) with mu the mean clean feature (not re-normalised)."""

    name = "class_center"

    def loss(self, adv, clean, iteration):
        return _mse(adv, clean.mean(dim=1, keepdim=True).expand_as(adv))


class AffineHull(Method):
    """OPOM-AffineHull: MSE(a_i, P_aff(a_i)), the projection onto the affine hull of the clean features."""

    name = "affine_hull"

    def __init__(self, rtol: float = 1e-6):
        self.rtol = rtol

    def loss(self, adv, clean, iteration):
        target = project_affine(adv.detach(), clean.detach(), rtol=self.rtol)
        return _mse(adv, target)


class ConvexHull(Method):
    """OPOM-ConvexHull: MSE(a_i, P_conv(a_i)) with coefficients in [lower, upper] summing to one.

    ``upper < 1`` gives the reduced hull. For the first ``warmup`` iterations the class-center loss is
    used (the reference's ``nter``, 5 in the paper's scripts): each image starts at a vertex of its own
    hull, where distance and gradient are zero.

    ``warm_start``: each projection after the first of a batch starts its exact active-set solve from the
    previous iteration's weights (the features move little per step), which skips most of the solver's
    work; the projection is the same to the solver's KKT tolerance. The first hull iteration of every batch
    (``iteration == warmup``) solves from scratch, so a mask never depends on the batch crafted before it.
    """

    name = "convex_hull"

    def __init__(self, lower: float = 0.0, upper: float = 1.0, warmup: int = 5, warm_start: bool = True):
        if not lower <= upper:
            raise ConfigError(f"method.lower ({lower}) must not exceed method.upper ({upper})")
        self.lower, self.upper, self.warmup, self.warm_start = lower, upper, warmup, warm_start
        self._weights: torch.Tensor | None = None  # float64 (B, N, N) weights of the previous iteration

    def loss(self, adv, clean, iteration):
        if iteration < self.warmup:
            self._weights = None
            return ClassCenter().loss(adv, clean, iteration)
        points, anchors = adv.detach().double(), clean.detach().double()
        init = self._weights if self.warm_start and iteration > self.warmup else None
        if init is not None and init.shape != (*points.shape[:2], anchors.shape[1]):
            init = None
        weights = convex_hull_weights(points, anchors, self.lower, self.upper, init=init)
        self._weights = weights if self.warm_start else None
        return _mse(adv, (weights @ anchors).to(adv.dtype))


class RandomNoise(Method):
    """The floor: a uniform +-eps mask drawn per identity, no optimisation."""

    name = "random_noise"
    crafts = False

    def loss(self, adv, clean, iteration):
        raise RuntimeError("random_noise crafts no mask by optimisation")


METHODS: dict[str, type[Method]] = {
    m.name: m for m in (FIUAP, FIUAPPlus, ClassCenter, AffineHull, ConvexHull, RandomNoise)}
