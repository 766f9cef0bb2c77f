"""Pure metric functions of the evaluation protocol (shared/design/method.md section 6)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def apply_mask_uint8(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The reference's protected probe: ``uint8(clip(x + delta, 0, 255))`` with truncation, not rounding.

    images: uint8 (..., 3, H, W); masks: float in [0, 1] image units, broadcastable to images.
    The mask is converted to grey levels and rounded to 1e-4 of a level first: a float32 mask of exactly
    -8/255 is -8.0000005 levels, which truncation would otherwise turn into a 9-level change.
    """
    levels = torch.round(masks.to(torch.float64) * 255.0, decimals=4)
    x = images.to(torch.float64) + levels
    return x.clamp_(0, 255).floor_().to(torch.uint8)


def identification_hits(probes: torch.Tensor, gallery: torch.Tensor, distractors: torch.Tensor,
                        ks: tuple[int, ...] = (1, 5, 10)) -> tuple[dict[int, torch.Tensor], int]:
    """Rank-k hits of one-enrolled-image identification with distractors.

    probes, gallery: (I, T, D) embeddings of each identity's T test images (probes possibly protected,
    gallery clean); distractors: (M, D). For every identity and ordered pair (i, j), i != j, the gallery is
    {gallery[j]} plus all distractors, ranked by cosine similarity to probes[i]; the pair is a hit at k when
    gallery[j] is among the top k (ties go to the genuine image). Returns per-identity hit counts
    ``{k: (I,) long}`` and the number of trials per identity, T * (T - 1).
    """
    n_id, t, _ = probes.shape
    p, g, d = (F.normalize(e.double(), dim=-1) for e in (probes, gallery, distractors))
    genuine = torch.einsum("aid,ajd->aij", p, g)  # (I, T, T)
    dist_sims = torch.sort(p.reshape(n_id * t, -1) @ d.T, dim=1).values  # (I*T, M) ascending
    # number of distractors strictly more similar than the genuine image = its rank (0-based)
    above = dist_sims.shape[1] - torch.searchsorted(dist_sims, genuine.reshape(n_id * t, t), right=True)
    rank = above.reshape(n_id, t, t)
    off_diag = ~torch.eye(t, dtype=torch.bool)
    hits = {k: ((rank < k) & off_diag).sum(dim=(1, 2)) for k in ks}
    return hits, t * (t - 1)


def protection_rates(clean: torch.Tensor, protected: torch.Tensor, distractors: torch.Tensor,
                     ks: tuple[int, ...] = (1, 5, 10), gallery: torch.Tensor | None = None) -> dict[str, float]:
    """Clean top-k accuracy and protection success rate PSR@k = 1 - hits@k / trials.

    clean, protected: (I, T, D) embeddings of clean and protected probes; distractors: (M, D); gallery:
    the enrolled images (I, T, D), the clean probes themselves by default (the paper's protocol; a
    different gallery serves probes that went through a transform while enrolment did not).
    """
    gallery = clean if gallery is None else gallery
    clean_hits, trials = identification_hits(clean, gallery, distractors, ks)
    prot_hits, _ = identification_hits(protected, gallery, distractors, ks)
    total = trials * clean.shape[0]
    out = {f"clean_top{k}": clean_hits[k].sum().item() / total for k in ks}
    out.update({f"psr_top{k}": 1.0 - prot_hits[k].sum().item() / total for k in ks})
    return out


def tar_at_far(genuine: torch.Tensor, impostor: torch.Tensor,
               fars: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4)) -> dict[float, tuple[float, float]]:
    """Verification: ``{far: (threshold, TAR)}`` from genuine and impostor similarity scores.

    The threshold is the smallest score that at most ``far`` of the impostor scores reach (``score >= t``
    counts as a match); TAR is the fraction of genuine scores that reach it. With fewer than ``1 / far``
    impostor scores the threshold is the highest impostor score plus an epsilon (FAR 0 at that size).
    """
    imp = torch.sort(impostor.double().flatten(), descending=True).values
    gen = genuine.double().flatten()
    out = {}
    for far in fars:
        allowed = int(far * len(imp))  # impostors allowed at or above the threshold
        threshold = imp[allowed].item() + 1e-12 if allowed < len(imp) else imp[-1].item()
        out[far] = (threshold, (gen >= threshold).double().mean().item())
    return out


def verification_scores(probes: torch.Tensor, gallery: torch.Tensor,
                        distractors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine scores of the identification trials read as verification pairs.

    genuine: every ordered pair (i, j), i != j, of an identity's probes and gallery images (I * T * (T-1));
    impostor: every probe against every distractor (I * T * M).
    """
    n_id, t, _ = probes.shape
    p, g, d = (F.normalize(e.double(), dim=-1) for e in (probes, gallery, distractors))
    pairs = torch.einsum("aid,ajd->aij", p, g)
    genuine = pairs[:, ~torch.eye(t, dtype=torch.bool)]
    impostor = p.reshape(n_id * t, -1) @ d.T
    return genuine.flatten(), impostor.flatten()


def image_quality(clean: torch.Tensor, protected: torch.Tensor) -> dict[str, float]:
    """PSNR (dB) and SSIM of protected against clean uint8 images (B, 3, H, W), averaged over images."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    x, y = clean.double() / 255.0, protected.double() / 255.0
    psnr = peak_signal_noise_ratio(y, x, data_range=1.0, reduction="none", dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(y, x, data_range=1.0, reduction="none")
    return {"psnr": psnr.mean().item(), "ssim": ssim.mean().item()}
