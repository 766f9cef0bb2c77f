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
    fraction,
    image_quality,
    rates_from_hits,
    thresholds_at_far,
)
from opom.evaluation.robustness import apply_transform

FARS = (1e-1, 1e-2, 1e-3, 1e-4)


def model_threshold(model: nn.Module) -> float | None:
    """The model's own cosine verification threshold where one is known (its preprocessing declares it, e.g.
    SFace 0.363, or a config sets ``preprocessing.threshold``), else None — also for models whose rule is the L2
    distance of raw descriptors (dlib's family: :func:`_psr_at_l2_threshold`)."""
    preprocessing = getattr(model, "preprocessing", None)
    threshold = getattr(preprocessing, "threshold", None)
    if threshold is None or getattr(preprocessing, "rule", "cosine") != "cosine":
        return None
    return float(threshold)


def _psr_at_l2_threshold(model: nn.Module, protected: torch.Tensor, clean: torch.Tensor) -> dict[str, float]:
    """PSR at the threshold of a model whose rule is the L2 distance of raw descriptors (dlib: < 0.6): the share of
    ordered pairs (i, j), i != j, of protected probe i and clean image j it no longer calls the same person."""
    preprocessing = getattr(model, "preprocessing", None)
    if getattr(preprocessing, "rule", "cosine") != "l2" or preprocessing.threshold is None:
        return {}
    t = protected.shape[1]
    same = preprocessing.same_person(protected.double()[:, :, None], clean.double()[:, None, :])
    return {"threshold": float(preprocessing.threshold),
            "psr_at_threshold": _share(~same[:, ~torch.eye(t, dtype=torch.bool)])}


def _share(mask: torch.Tensor) -> float:
    return fraction(int(mask.sum().item()), mask.numel())


def _verification(protected_genuine, thresholds: dict, threshold: float | None) -> dict[str, float]:
    out = {}
    for far, (thr, tar) in thresholds.items():
        out[f"tar_clean@far{far:g}"] = tar
        out[f"tar_protected@far{far:g}"] = _share(protected_genuine >= thr)
    out.update(_at_threshold(protected_genuine, threshold))
    return out


def _at_threshold(protected_genuine: torch.Tensor, threshold: float | None) -> dict[str, float]:
    """PSR at the model's own threshold: the share of protected genuine pairs it no longer accepts."""
    if threshold is None:
        return {}
    return {"threshold": threshold, "psr_at_threshold": _share(protected_genuine < threshold)}


def _stream_scores(clean: RankCounter, others: list[RankCounter], store: GalleryEmbeddings, genuine: torch.Tensor,
                   fars: tuple[float, ...], chunk: int) -> dict[float, tuple[float, float]]:
    """One pass over the gallery feeding every rank counter and counting the clean probes' impostor scores
    (shared with the ``clean`` counter); a second pass, clean probes only, collects the exact scores the
    verification thresholds sit on. Returns ``{far: (threshold, TAR)}``."""
    histogram, lowest = Histogram(), float("inf")
    for d in store.chunks(chunk):
        d = F.normalize(d.double(), dim=-1)
        scores = clean.scores(d, normalized=True)
        clean.add_scores(scores)
        for counter in others:
            counter.update(d, normalized=True)
        histogram.add(scores)
        lowest = min(lowest, scores.min().item()) if scores.numel() else lowest

    def rescan():
        for d in store.chunks(chunk):
            yield clean.scores(d)

    gen = genuine.double().flatten()
    thresholds = thresholds_at_far(histogram, fars, rescan, lowest if histogram.n else 0.0)
    return {far: (thr, _share(gen >= thr)) for far, thr in thresholds.items()}


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
    raw = {}  # the protected probes' raw embeddings per transform (L2-rule models' own threshold)
    for name in robustness:
        clean_t = embed(model, apply_transform(flat, name), batch_size).view(n_id, t, -1)
        prot_t = embed(model, apply_transform(protected, name), batch_size).view(n_id, t, -1)
        # probes go through the transform; the gallery stays the clean, untransformed enrolment photos
        counters[name] = (RankCounter(clean_t, clean_e), RankCounter(prot_t, clean_e))
        raw[name] = prot_t

    genuine, protected_genuine = counters[""][0].genuine_pairs(), counters[""][1].genuine_pairs()
    others = [counters[""][1]] + [c for name, pair in counters.items() if name for c in pair]
    with gallery_embeddings(model, as_gallery(data.distractors), cache_dir, model_key, batch_size) as store:
        thresholds = _stream_scores(counters[""][0], others, store, genuine, FARS, chunk)
    model.train(was_training)

    threshold = model_threshold(model)
    out: dict = rates_from_hits(*counters[""], ks)
    out.update(_verification(protected_genuine, thresholds, threshold))
    if robustness:
        out["robustness"] = {name: {**rates_from_hits(*counters[name], ks),
                                    **_at_threshold(counters[name][1].genuine_pairs(), threshold),
                                    **_psr_at_l2_threshold(model, raw[name], clean_e)}
                             for name in robustness}
    out.update(_psr_at_l2_threshold(model, prot_e, clean_e))
    hits, trials = counters[""][1].hits((1,))
    out["per_identity_psr_top1"] = {name: fraction(trials - h, trials)
                                    for name, h in zip(data.names, hits[1].tolist(), strict=True)}
    return out


def mask_image_quality(data: ProtectionSet, masks: torch.Tensor) -> dict[str, float]:
    """PSNR / SSIM of the protected test images against the clean ones (model independent)."""
    test = data.test_images
    protected = apply_mask_uint8(test, masks.detach().cpu()[:, None])
    return image_quality(test.flatten(0, 1), protected.flatten(0, 1))
