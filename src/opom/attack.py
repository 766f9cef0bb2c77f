"""Universal sign-step optimisers that craft one mask per identity (pixel budget L-inf eps).

Both follow the authors' code exactly (docs/method.md, section 3), batched over identities:
tensors carry a leading identity dimension B and an image dimension N. Images are in [0, 1]; ``eps``
and ``step`` are given in grey levels (0..255) as in the paper (eps 8, step 1) and converted inside.

- :class:`FIM` — plain feature-iterative method: one universal step ``step * sign(mean_i g_i)``.
- :class:`DFANetMI` — DFANet dropout in the surrogate plus per-image momentum: each image takes its own
  sign step and the mask is the MEAN of the per-image offsets.

Random starts are drawn per identity from a generator seeded with ``seed`` (the reference seeds 0 before
each identity), so an identity's mask does not depend on which identities share its batch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from opom.errors import ConfigError

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma weights of R, G, B


@dataclass
class Budget:
    """Where and how much a mask may change a pixel (an *extension* of the paper's plain L-inf ball).

    ``region`` (H, W) in [0, 1] scales the L-inf budget per pixel — a soft face region leaves hair and background
    untouched (:func:`opom.data.alignment.face_region`); ``chroma`` in [0, 1] limits the colour part of the change
    (each pixel's change minus its luma change) to that fraction: the eye notices colour speckle on skin sooner
    than the same change in brightness; ``texture`` in [0, 1] makes the budget follow the photos' texture
    (:func:`texture_map`): flat skin keeps ``1 - texture`` of it, textured pixels (hair, beard, eyes, pores) all of
    it — change hides in texture. ``Budget()`` is the paper's budget.

    The crafter calls :meth:`for_images` on each batch's clean photos: with ``texture`` the batch gets its own
    per-identity region (B, 1, H, W) (the mean map of each person's photos; per photo when refining one photo).
    """

    region: torch.Tensor | None = None
    chroma: float = 1.0
    texture: float = 0.0
    texture_window: int = 5  # px: 5 on the 112 crop's scale (:func:`texture_map`)

    def __post_init__(self):
        if not 0 <= self.chroma <= 1:
            raise ConfigError(f"crafting.chroma must be in [0, 1], got {self.chroma}")
        if not 0 <= self.texture <= 1:
            raise ConfigError(f"crafting.texture must be in [0, 1], got {self.texture}")

    @property
    def plain(self) -> bool:
        return self.region is None and self.chroma == 1 and self.texture == 0

    def for_images(self, x: torch.Tensor) -> Budget:
        """The budget of one batch of clean photos ``x`` (B, N, 3, H, W) in [0, 1]: itself, or with ``texture`` a
        per-identity region (B, 1, H, W)."""
        if self.texture == 0:
            return self
        scale = texture_map(x.flatten(0, 1), window=self.texture_window).view(*x.shape[:2], 1, *x.shape[3:]).mean(dim=1)
        scale = scale.mul_(self.texture).add_(1 - self.texture)
        region = scale if self.region is None else scale * self.region.to(scale)
        return Budget(region, self.chroma)

    def apply_(self, delta: torch.Tensor, eps: float, rows: slice | None = None) -> torch.Tensor:
        """Shape (..., 3, H, W) offsets already within +-eps, in place; ``rows``: the identities of a per-identity
        region that ``delta`` holds (all of them when None)."""
        if self.region is not None:
            region = self.region if rows is None or self.region.dim() == 2 else self.region[rows]
            limit = region.to(delta) * eps
            torch.minimum(delta, limit, out=delta)
            torch.maximum(delta, -limit, out=delta)
        if self.chroma < 1:
            luma = (delta * torch.tensor(LUMA, dtype=delta.dtype, device=delta.device).view(3, 1, 1)).sum(-3, True)
            delta.sub_(luma).mul_(self.chroma).add_(luma)
        return delta


def texture_map(images: torch.Tensor, reference: float = 8 / 255, window: int = 5) -> torch.Tensor:
    """How textured each pixel's neighbourhood is, (M, 1, H, W) in [0, 1]: the local standard deviation of luma
    over a ``window`` x ``window`` box (odd; 5 px on the 112 face crop's scale) relative to ``reference`` (8 grey
    levels: contrast that hides a change of the paper's eps; 1 from there up), smoothed over the same box so that
    the budget has no hard edges."""
    k = window
    luma = (images * torch.tensor(LUMA, dtype=images.dtype, device=images.device).view(3, 1, 1)).sum(-3, True)

    def box(t):
        return F.avg_pool2d(t, k, stride=1, padding=k // 2, count_include_pad=False)

    std = (box(luma * luma) - box(luma) ** 2).clamp_min_(0).sqrt_()
    return box(std.div_(reference).clamp_(max=1.0)).clamp_(0, 1)


@dataclass
class AttackState:
    """Per-identity optimisation state of the identities in the current batch."""

    x: torch.Tensor  # clean images (B, N, 3, H, W) in [0, 1]
    x_adv: torch.Tensor  # current perturbed images, same shape
    momentum: torch.Tensor | None = None
    clean_features: list[torch.Tensor] | None = None  # per surrogate (B, N, D), cached unless recomputed per step
    budget: Budget | None = None


def uniform_noise(shape: tuple[int, ...], eps: float, seed: int, device=None) -> torch.Tensor:
    """U(-eps, eps) of ``shape`` from a CPU generator seeded with ``seed`` (device independent)."""
    gen = torch.Generator().manual_seed(int(seed))
    return ((torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * eps).float().to(device)


def batch_seed(seed: int, first_identity: int) -> int:
    """Seed of the random draws of the batch whose first person is ``first_identity`` (DFANet dropout): the
    same batch draws the same dropout masks in any job, alone or in an identity shard."""
    return (int(seed) * 1_000_003 + int(first_identity)) % (2**63 - 1)


def declared_dfanet_sites(model: nn.Module) -> list[nn.Module] | None:
    """The sites a model declares for DFANet's dropout (its backbone's ``dfanet_sites()``), or None."""
    inner = getattr(model, "backbone", model)
    return list(inner.dfanet_sites()) if hasattr(inner, "dfanet_sites") else None


def _candidate_sites(model: nn.Module) -> list[nn.Module]:
    """Every convolution output of a model that declares no sites (a TFJS graph exposes its conv outputs)."""
    inner = getattr(model, "backbone", model)
    if hasattr(inner, "conv_sites"):
        return list(inner.conv_sites())
    return [m for m in inner.modules() if isinstance(m, nn.Conv2d)]


def _cosine_with_dropout(model: nn.Module, images: torch.Tensor, sites: list[nn.Module], p: float,
                         clean: torch.Tensor, draws: int = 2) -> float:
    values = []
    with torch.no_grad():
        for d in range(draws):
            torch.manual_seed(1_000 + d)
            with feature_dropout(sites, p):
                values.append(F.cosine_similarity(model(images), clean, dim=1).mean().item())
    return sum(values) / len(values)


def select_dfanet_sites(model: nn.Module, images: torch.Tensor, p: float, min_cosine: float = 0.9) -> list[nn.Module]:
    """DFANet's dropout sites of ``model``: those it declares, else a greedy choice among its convolution outputs.

    DFANet (Wang et al., CVPR 2021) drops features after the convs of residual branches; on a network that declares
    no sites, dropout after every conv can destroy the embedding (SFace: cosine 0.06-0.20 with its dropout-free
    self at p = 0.1), and the attack then follows noise. Here each conv output is tried alone (mean cosine of the
    clean embeddings of ``images`` with and without dropout), and the least harmful are added one by one while the
    combined cosine stays >= ``min_cosine``. Deterministic (seeded draws); the caller's RNG state is restored.
    """
    declared = declared_dfanet_sites(model)
    if declared is not None or p <= 0:
        return declared or []
    state = torch.get_rng_state()
    try:
        with torch.no_grad():
            clean = model(images)
        candidates = _candidate_sites(model)
        alone = sorted(range(len(candidates)), reverse=True,
                       key=lambda i: _cosine_with_dropout(model, images, [candidates[i]], p, clean, draws=1))
        chosen: list[int] = []
        for i in alone:
            trial = [candidates[j] for j in sorted(chosen + [i])]
            if _cosine_with_dropout(model, images, trial, p, clean) >= min_cosine:
                chosen.append(i)
        return [candidates[j] for j in sorted(chosen)]
    finally:
        torch.set_rng_state(state)


def dfanet_sites(model: nn.Module) -> list[nn.Module]:
    """Where DFANet puts dropout in ``model`` without a choice: the declared sites, else after every conv."""
    declared = declared_dfanet_sites(model)
    return declared if declared is not None else _candidate_sites(model)


@contextlib.contextmanager
def feature_dropout(model: nn.Module | nn.ModuleList | list, p: float):
    """DFANet: apply always-on dropout(p) to the outputs of the given sites — a list of modules — or of a model's
    (or a ``ModuleList`` ensemble's) :func:`dfanet_sites`. BatchNorm stays in eval mode.
    """
    if p <= 0:
        yield model
        return
    if isinstance(model, list):
        sites = model
    else:
        members = list(model) if isinstance(model, nn.ModuleList) else [model]
        sites = [site for member in members for site in dfanet_sites(member)]
    handles = [m.register_forward_hook(lambda _m, _i, out: F.dropout(out, p, training=True)) for m in sites]
    try:
        yield model
    finally:
        for h in handles:
            h.remove()


# The CPU update runs over chunks of identities whose gradient, images and perturbed images fit together in about
# this many bytes: each pass of the update then reads them from the cache, not from memory.
UPDATE_CHUNK_BYTES = 16 << 20


class SignAttack:
    """Shared parts: budget, step, iterations, random start, projection of the mean offset onto the budget."""

    name = "sign"
    dropout: float = 0.0
    recompute_clean: bool = False

    def __init__(self, eps: float = 8.0, step: float = 1.0, iterations: int = 16, random_start: bool = True,
                 seed: int = 0):
        if eps <= 0:
            raise ConfigError(f"attack.eps must be > 0 (grey levels, e.g. attack.eps=8), got {eps}")
        if step <= 0:
            raise ConfigError(f"attack.step must be > 0 (grey levels, e.g. attack.step=1), got {step}")
        if iterations < 1:
            raise ConfigError(f"attack.iterations must be >= 1, got {iterations}")
        self.eps_levels, self.step_levels = float(eps), float(step)
        self.eps, self.step = eps / 255.0, step / 255.0
        self.iterations, self.random_start, self.seed = int(iterations), bool(random_start), int(seed)

    def init_state(self, x: torch.Tensor, init: torch.Tensor | None = None,
                   budget: Budget | None = None) -> AttackState:
        """Start every image of every identity at ``x + U(-eps, eps)`` (the reference does not clip here), or at
        ``clip(x + init)`` when masks to start from are given (B, 3, H, W; per-photo refinement)."""
        x_adv = x.clone()
        if init is not None:
            x_adv = (x + init.to(x).clamp(-self.eps, self.eps).unsqueeze(1)).clamp_(0, 1)
        elif self.random_start:
            noise = uniform_noise(tuple(x.shape[1:]), self.eps, self.seed, x.device)
            x_adv = x + noise  # the same per-identity draw for every identity, as the reference
        return AttackState(x=x, x_adv=x_adv, budget=None if budget is None or budget.plain else budget)

    def update(self, state: AttackState, grad: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """One iteration from the loss gradient w.r.t. ``state.x_adv``; returns the masks (B, 3, H, W), written
        into ``out`` when given (e.g. the crafter's mask rows of this batch: no copy).

        Works in place on ``state.x_adv``, ``state.momentum`` and ``grad`` (the crafter passes a fresh
        gradient each step): no image-sized temporaries. On the CPU the identities are updated a chunk at a time
        (:data:`UPDATE_CHUNK_BYTES`): the update makes several passes over the images, and a chunk's tensors stay
        in the cache between them (measured on 2 cores, 16 identities x 10 images: ~5 ms per step against ~7.5 for
        one identity per thread on a thread pool and for the whole batch at once). Every chunking does exactly the
        same arithmetic per identity, so the masks are bit-identical to the whole-batch update (GPUs' path).
        """
        if out is None:
            out = torch.empty((grad.shape[0], *grad.shape[2:]), dtype=state.x.dtype, device=state.x.device)
        if state.x.device.type != "cpu":
            self._update(state, grad, slice(None), out)
            return out
        per_identity = 3 * grad[0].numel() * grad.element_size()  # gradient, images, perturbed images
        chunk = max(1, UPDATE_CHUNK_BYTES // per_identity)
        with torch.no_grad():
            for first in range(0, grad.shape[0], chunk):
                rows = slice(first, first + chunk)
                self._update(state, grad, rows, out[rows])
        return out

    def _update(self, state: AttackState, grad: torch.Tensor, ids: slice, out: torch.Tensor) -> None:
        """The update of the identities ``ids`` (a slice, so that every tensor below is a view); their masks go
        to ``out``."""
        raise NotImplementedError

    def _project(self, x_adv: torch.Tensor, x: torch.Tensor, budget: Budget | None, out: torch.Tensor,
                 ids: slice) -> None:
        """Mask (into ``out``) = the mean offset over images, clipped to +-eps (and shaped by ``budget``); every
        image restarts at ``clip(x + mask)`` (``x_adv`` is overwritten with that). ``ids``: the identities."""
        delta = torch.mean(x_adv.sub_(x), dim=1, out=out).clamp_(-self.eps, self.eps)
        if budget is not None:
            budget.apply_(delta, self.eps, rows=ids)
        torch.add(x, delta.unsqueeze(1), out=x_adv).clamp_(0, 1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps_levels}, step={self.step_levels}, iterations={self.iterations})"


class FIM(SignAttack):
    """Feature-iterative method: ``x_adv += step * sign(mean over images of g)``, then project the mean offset."""

    name = "fim"

    def _update(self, state, grad, ids, out):
        x_adv = state.x_adv[ids].add_(grad[ids].mean(dim=1, keepdim=True).sign_(), alpha=self.step)
        self._project(x_adv, state.x[ids], state.budget, out, ids)


class DFANetMI(SignAttack):
    """DFANet + momentum (the transfer-enhanced variant; 100 iterations in the paper).

    The surrogate runs with dropout(``dropout``) after its input conv and both convs of every residual
    branch; clean features are recomputed through it at every step. Momentum accumulates per image with
    decay ``decay`` (1 in the reference). ``normalizer='reference'`` divides the gradient by its mean
    absolute value over images, channels and rows — one scale per pixel column, the reference's quirk;
    ``normalizer='l1'`` is the standard MI-FGSM per-image L1 normaliser (labelled extension). The crafter
    seeds the dropout at the start of every batch with :func:`batch_seed`, so a batch's masks do not depend
    on what ran before it (model training, other batches, other shards).
    """

    name = "dfanet_mi"
    recompute_clean = True

    def __init__(self, eps: float = 8.0, step: float = 1.0, iterations: int = 100, random_start: bool = True,
                 seed: int = 0, dropout: float = 0.1, decay: float = 1.0, normalizer: str = "reference"):
        super().__init__(eps, step, iterations, random_start, seed)
        if normalizer not in ("reference", "l1"):
            raise ConfigError(f"attack.normalizer must be 'reference' or 'l1', got {normalizer!r}")
        if not 0 <= dropout < 1:
            raise ConfigError(f"attack.dropout must be in [0, 1), got {dropout}")
        self.dropout, self.decay, self.normalizer = float(dropout), float(decay), normalizer

    def update(self, state, grad, out=None):
        if state.momentum is None:  # decay * 0 + g == g exactly: the first step uses the gradient alone
            state.momentum = torch.zeros_like(grad)
        return super().update(state, grad, out)

    def _update(self, state, grad, ids, out):
        dims = (1, 2, 3) if self.normalizer == "reference" else (2, 3, 4)
        g = grad[ids]
        g = g.div_(g.abs().mean(dim=dims, keepdim=True).clamp_min(1e-12))
        momentum = state.momentum[ids].mul_(self.decay).add_(g)
        x_adv = state.x_adv[ids].add_(momentum.sign(), alpha=self.step)
        self._project(x_adv, state.x[ids], state.budget, out, ids)


ATTACKS: dict[str, type[SignAttack]] = {a.name: a for a in (FIM, DFANetMI)}
