"""Transfer evaluation of masks against face models (identification with distractors)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from opom.data.gallery import as_gallery
from opom.data.protection import ProtectionSet
from opom.evaluation.embeddings import GalleryEmbeddings, embed, gallery_embeddings
from opom.evaluation.metrics import (
    Histogram,
    RankCounter,
    apply_mask_uint8,
    genuine_scores,
    image_quality,
    rates_from_hits,
    thresholds_at_far,
)
from opom.evaluation.robustness import apply_transform

FARS = (1e-1, 1e-2, 1e-3, 1e-4)


def _verification(protected_genuine, thresholds: dict) -> dict[str, float]:
    out = {}
    for far, (thr, tar) in thresholds.items():
        out[f"tar_clean@far{far:g}"] = tar
        out[f"tar_protected@far{far:g}"] = (protected_genuine >= thr).double().mean().item()
    return out


def _psr_at_threshold(model: nn.Module, protected: torch.Tensor, clean: torch.Tensor) -> dict[str, float]:
    """Share of ordered pairs (i, j), i != j, where the model's own rule (its threshold, cosine or L2) says the
    protected probe i and the clean image j are NOT the same person; empty without a declared threshold."""
    preprocessing = getattr(model, "preprocessing", None)
    if getattr(preprocessing, "threshold", None) is None:
        return {}
    t = protected.shape[1]
    same = preprocessing.same_person(protected.double()[:, :, None], clean.double()[:, None, :])
    return {"psr_at_threshold": 1.0 - same[:, ~torch.eye(t, dtype=torch.bool)].double().mean().item()}


def _stream_scores(clean: RankCounter, others: list[RankCounter], store: GalleryEmbeddings, genuine: torch.Tensor,
                   fars: tuple[float, ...], chunk: int) -> dict[float, tuple[float, float]]:
    """One pass over the gallery feeding every rank counter and counting the clean probes' impostor scores
    (shared with the ``clean`` counter); a second pass, clean probes only, collects the exact scores the
    verification thresholds sit on. Returns ``{far: (threshold, TAR)}``."""
    histogram, lowest = Histogram(), float("inf")
    for d in store.chunks(chunk):
        d = F.normalize(d.double(), dim=-1)
        scores = clean.probes @ d.T
        clean.add_scores(scores)
        for counter in others:
            counter.update(d, normalized=True)
        histogram.add(scores)
        lowest = min(lowest, scores.min().item()) if scores.numel() else lowest

    def rescan():
        for d in store.chunks(chunk):
            yield clean.probes @ F.normalize(d.double(), dim=-1).T

    gen = genuine.double().flatten()
    thresholds = thresholds_at_far(histogram, fars, rescan, lowest if histogram.n else 0.0)
    return {far: (thr, (gen >= thr).double().mean().item()) for far, thr in thresholds.items()}


def evaluate_model(model: nn.Module, data: ProtectionSet, masks: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10),
                   batch_size: int = 256, robustness: tuple[str, ...] = (), cache_dir: str | Path | None = None,
                   model_key: dict | None = None, chunk: int = 8192) -> dict:
    """Identification (clean top-k, PSR@k), verification (TAR@FAR, PSR at the model's threshold) and the
    per-identity PSR@1 of ``masks`` (I, 3, H, W) on ``data``'s test images for one model.

    The distractor gallery is embedded once per (model, gallery) — cached under ``cache_dir`` when a
    ``model_key`` names the model — and streamed in chunks of ``chunk`` embeddings: every metric of every
    probe set is accumulated in one pass (a second one only for exact verification thresholds), so memory
    does not grow with the gallery.

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
    counters = {"": (RankCounter(clean_e, clean_e), RankCounter(prot_e, clean_e))}
    for name in robustness:
        clean_t = embed(model, apply_transform(flat, name), batch_size).view(n_id, t, -1)
        prot_t = embed(model, apply_transform(protected, name), batch_size).view(n_id, t, -1)
        # probes go through the transform; the gallery stays the clean, untransformed enrolment photos
        counters[name] = (RankCounter(clean_t, clean_e), RankCounter(prot_t, clean_e))

    genuine, protected_genuine = genuine_scores(clean_e, clean_e), genuine_scores(prot_e, clean_e)
    others = [counters[""][1]] + [c for name, pair in counters.items() if name for c in pair]
    with gallery_embeddings(model, as_gallery(data.distractors), cache_dir, model_key, batch_size) as store:
        thresholds = _stream_scores(counters[""][0], others, store, genuine, FARS, chunk)
    model.train(was_training)

    out: dict = rates_from_hits(*counters[""], ks)
    if robustness:
        out["robustness"] = {name: rates_from_hits(*counters[name], ks) for name in robustness}
    out.update(_verification(protected_genuine, thresholds))
    out.update(_psr_at_threshold(model, prot_e, clean_e))
    hits, trials = counters[""][1].hits((1,))
    out["per_identity_psr_top1"] = dict(zip(data.names, (1.0 - hits[1].double() / trials).tolist(), strict=True))
    return out


def mask_image_quality(data: ProtectionSet, masks: torch.Tensor) -> dict[str, float]:
    """PSNR / SSIM of the protected test images against the clean ones (model independent)."""
    test = data.test_images
    protected = apply_mask_uint8(test, masks.detach().cpu()[:, None])
    return image_quality(test.flatten(0, 1), protected.flatten(0, 1))
