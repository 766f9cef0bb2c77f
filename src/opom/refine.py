"""Per-photo refinement: a person's universal mask, sharpened on one photo (an *extension* of OPOM).

The universal mask is the fast path (one mask for every photo and video frame). For a still photo there is time
for more: start from the universal mask and run a few more attack steps on that photo's own aligned canvas, with
the same crafter (:class:`~opom.module.MaskCrafter`: surrogates, ensemble, transforms, budget), so one code path
crafts every mask. Options:

- ``eps_ladder``: a minimum-eps search — refine at the smallest budget first and keep, per photo, the first budget
  at which every surrogate stops matching the person (its own rule against the person's clean reference photos);
  photos that no budget protects keep the largest.
- ``ssim``: a floor on the face-region SSIM of the protected photo: a mask that goes below it is scaled down
  (bisection) until the photo keeps that similarity to its original.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import lightning as L
import torch
from torch import nn

from opom.attack import FIM
from opom.data.protection import ProtectionDataModule
from opom.errors import ConfigError
from opom.evaluation.metrics import apply_mask_uint8


@dataclass
class RefineSettings:
    steps: int = 0  # attack steps per photo (0: no refinement)
    eps: float | None = None  # grey levels; None: the universal mask's eps
    step: float = 1.0
    eps_ladder: list[float] = field(default_factory=list)  # minimum-eps search (grey levels, increasing)
    ssim: float | None = None  # face-region SSIM floor

    def __post_init__(self):
        if self.steps < 0:
            raise ConfigError(f"refine.steps must be >= 0, got {self.steps}")
        if self.eps_ladder and sorted(self.eps_ladder) != list(self.eps_ladder):
            raise ConfigError(f"refine.eps_ladder must increase, got {self.eps_ladder}")
        if self.ssim is not None and not 0 < self.ssim < 1:
            raise ConfigError(f"refine.ssim must be in (0, 1), got {self.ssim}")


def _crafter_pass(make_crafter, photos: torch.Tensor, init: torch.Tensor, eps: float, settings: RefineSettings,
                  trainer_kwargs: dict) -> torch.Tensor:
    attack = FIM(eps=eps, step=settings.step, iterations=settings.steps, random_start=False)
    module = make_crafter(attack, len(photos), init)
    data = SimpleNamespace(mask_images=photos[:, None])
    trainer = L.Trainer(**{**trainer_kwargs, "enable_progress_bar": False, "enable_model_summary": False,
                           "log_every_n_steps": 1}, max_epochs=1, logger=False, enable_checkpointing=False)
    trainer.fit(module, datamodule=ProtectionDataModule(data, len(photos), settings.steps))
    return module.masks.detach().cpu()


def protected_by_all(surrogates: list[nn.Module], photos: torch.Tensor, masks: torch.Tensor,
                     references: list[torch.Tensor]) -> torch.Tensor:
    """(I,) True where no surrogate says a protected photo is the same person as any of its clean references
    (``references[i]``: uint8 (R, 3, S, S))."""
    out = torch.ones(len(photos), dtype=torch.bool)
    protected = apply_mask_uint8(photos, masks)
    with torch.no_grad():
        for model in surrogates:
            rule = model.preprocessing
            probe = model(protected.float() / 255)
            for i, refs in enumerate(references):
                clean = model(refs.float() / 255)
                out[i] &= not bool(rule.same_person(probe[i:i + 1], clean).any())
    return out


def fit_ssim(photos: torch.Tensor, masks: torch.Tensor, floor: float, box: tuple[int, int, int, int],
             rounds: int = 8) -> torch.Tensor:
    """Scale each mask down (bisection over a factor in [0, 1]) until the face region (``box``: x0, y0, x1, y1)
    of the protected photo keeps an SSIM >= ``floor`` with the original; masks already above it are kept."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    x0, y0, x1, y1 = box

    def score(m):
        p = apply_mask_uint8(photos, m)
        a, b = photos[..., y0:y1, x0:x1].float() / 255, p[..., y0:y1, x0:x1].float() / 255
        return ssim(b, a, data_range=1.0, reduction="none")

    out = masks.clone()
    low, high = torch.zeros(len(masks)), torch.ones(len(masks))
    ok = score(masks) >= floor
    for _ in range(rounds):
        mid = (low + high) / 2
        good = score(masks * mid.view(-1, 1, 1, 1)) >= floor
        low = torch.where(good, mid, low)
        high = torch.where(good, high, mid)
    out[~ok] = masks[~ok] * low[~ok].view(-1, 1, 1, 1)
    return out


def refine(make_crafter, surrogates: list[nn.Module], photos: torch.Tensor, init: torch.Tensor,
           references: list[torch.Tensor], settings: RefineSettings, default_eps: float, face_box,
           trainer_kwargs: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Refine ``init`` masks (I, 3, S, S) on ``photos`` (uint8 (I, 3, S, S)); returns the masks and the eps each
    photo ended with (grey levels). ``make_crafter(attack, n, init)`` builds the crafter (the job's options)."""
    trainer_kwargs = trainer_kwargs or {}
    ladder = list(settings.eps_ladder) or [settings.eps or default_eps]
    masks, used = init.clone(), torch.full((len(photos),), float(ladder[-1]))
    todo = torch.arange(len(photos))
    for eps in ladder:
        start = masks[todo].clamp(-eps / 255, eps / 255)
        masks[todo] = _crafter_pass(make_crafter, photos[todo], start, eps, settings, trainer_kwargs)
        used[todo] = float(eps)
        if len(ladder) == 1:
            break
        done = protected_by_all(surrogates, photos[todo], masks[todo], [references[int(i)] for i in todo])
        todo = todo[~done]
        if len(todo) == 0:
            break
    if settings.ssim is not None:
        masks = fit_ssim(photos, masks, settings.ssim, face_box)
    return masks, used
