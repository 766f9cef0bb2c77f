"""Transfer evaluation of masks against face models (identification with distractors)."""

from __future__ import annotations

import torch
from torch import nn

from opom.data.protection import ProtectionSet
from opom.evaluation.metrics import (
    apply_mask_uint8,
    identification_hits,
    image_quality,
    protection_rates,
    tar_at_far,
    verification_scores,
)
from opom.evaluation.robustness import apply_transform

FARS = (1e-1, 1e-2, 1e-3, 1e-4)


@torch.no_grad()
def embed(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Embeddings (B, D) of uint8 images (B, 3, H, W), in batches."""
    device = next(model.parameters(), torch.empty(0)).device
    out = [model(images[i:i + batch_size].to(device).float() / 255.0).float().cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out)


def verification_rates(clean: torch.Tensor, protected: torch.Tensor, distractors: torch.Tensor,
                       threshold: float | None = None, fars: tuple[float, ...] = FARS) -> dict[str, float]:
    """TAR at each FAR for clean and protected probes (thresholds set on the clean impostor scores), and
    the protection rate at the model's own verification threshold (protected genuine pairs below it)."""
    genuine, impostor = verification_scores(clean, clean, distractors)
    protected_genuine, _ = verification_scores(protected, clean, distractors)
    out = {}
    for far, (thr, tar) in tar_at_far(genuine, impostor, fars).items():
        out[f"tar_clean@far{far:g}"] = tar
        out[f"tar_protected@far{far:g}"] = (protected_genuine >= thr).double().mean().item()
    if threshold is not None:
        out["psr_at_threshold"] = (protected_genuine < threshold).double().mean().item()
    return out


def evaluate_model(model: nn.Module, data: ProtectionSet, masks: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10),
                   batch_size: int = 256, robustness: tuple[str, ...] = ()) -> dict:
    """Identification (clean top-k, PSR@k), verification (TAR@FAR, PSR at the model's threshold) and the
    per-identity PSR@1 of ``masks`` (I, 3, H, W) on ``data``'s test images for one model.

    ``robustness`` names transforms (:mod:`opom.evaluation.robustness`) applied to the probes, clean and
    protected alike, before identification: ``out["robustness"][name]`` holds clean top-k and PSR@k then.
    """
    was_training = model.training
    model.eval()
    test = data.test_images
    n_id, t = test.shape[:2]
    flat = test.flatten(0, 1)
    protected = apply_mask_uint8(test, masks.detach().cpu()[:, None]).flatten(0, 1)
    clean_e = embed(model, flat, batch_size).view(n_id, t, -1)
    prot_e = embed(model, protected, batch_size).view(n_id, t, -1)
    dist_e = embed(model, data.distractors, batch_size)
    out: dict = protection_rates(clean_e, prot_e, dist_e, ks)
    if robustness:
        out["robustness"] = {}
        for name in robustness:
            clean_t = embed(model, apply_transform(flat, name), batch_size).view(n_id, t, -1)
            prot_t = embed(model, apply_transform(protected, name), batch_size).view(n_id, t, -1)
            # probes go through the transform; the gallery stays the clean, untransformed enrolment photos
            out["robustness"][name] = protection_rates(clean_t, prot_t, dist_e, ks, gallery=clean_e)
    model.train(was_training)
    threshold = getattr(getattr(model, "preprocessing", None), "threshold", None)
    out.update(verification_rates(clean_e, prot_e, dist_e, threshold))
    hits, trials = identification_hits(prot_e, clean_e, dist_e, ks=(1,))
    out["per_identity_psr_top1"] = dict(zip(data.names, (1.0 - hits[1].double() / trials).tolist(), strict=True))
    return out


def mask_image_quality(data: ProtectionSet, masks: torch.Tensor) -> dict[str, float]:
    """PSNR / SSIM of the protected test images against the clean ones (model independent)."""
    test = data.test_images
    protected = apply_mask_uint8(test, masks.detach().cpu()[:, None])
    return image_quality(test.flatten(0, 1), protected.flatten(0, 1))
