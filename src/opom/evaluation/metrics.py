"""Pure metric functions of the evaluation protocol (docs/protocol.md)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F


def apply_mask_uint8(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The reference's protected probe: ``uint8(clip(x + m, 0, 255))`` — truncation, not rounding.

    images: uint8 (..., 3, H, W); masks: float in [0, 1] image units (as crafted and saved), broadcastable to
    images. The mask is turned into grey levels in float32, the precision it is stored in, which gives back
    whole levels exactly (a saved -8/255 becomes -8.0, not -8.0000005); the sum is then formed in float64, clipped
    and truncated as the authors' evaluation does with its float mask in grey levels. A mask a hair below a
    whole level (2.99996) stays below it: the pixel moves by 2 levels, as in the reference.
    """
    levels = masks.to(torch.float32) * 255.0
    x = images.to(torch.float64) + levels.to(torch.float64)
    return x.clamp_(0, 255).floor_().to(torch.uint8)


# Two cosine scores closer than this are a tie (ties go to the genuine image). Embeddings are float32 (about 7
# significant digits), so scores that agree to 1e-9 cannot be told apart; the float64 scores of one pair of
# embeddings differ by ~1e-16 between matrix products of different shapes, which this absorbs.
TIE_TOLERANCE = 1e-9


def cosine_scores(probes: torch.Tensor, rows: torch.Tensor, normalized: bool = False) -> torch.Tensor:
    """Cosine similarities (P, R) in float64 of probes (P, D) and rows (R, D): the one scoring kernel of the
    evaluation (genuine and distractor scores alike). ``normalized``: both are unit float64 already."""
    if not normalized:
        probes, rows = F.normalize(probes.double(), dim=-1), F.normalize(rows.double(), dim=-1)
    return probes @ rows.T


def _pair_scores(probes: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """(I, T, T) scores of each identity's probes (rows) against its own gallery images (columns), with
    :func:`cosine_scores`."""
    p, g = F.normalize(probes.double(), dim=-1), F.normalize(gallery.double(), dim=-1)
    return torch.stack([cosine_scores(p[a], g[a], normalized=True) for a in range(p.shape[0])]) if len(p) else \
        torch.empty(0, probes.shape[1], gallery.shape[1], dtype=torch.float64)


class RankCounter:
    """Streams distractors past fixed probes and counts, per probe and genuine gallery image, the distractors
    more similar to the probe than that gallery image (its 0-based rank). Ties go to the genuine image: a
    distractor counts only when it scores more than :data:`TIE_TOLERANCE` above it, so an exact duplicate of the
    genuine image among the distractors does not push it down.

    probes, gallery: (I, T, D) embeddings of each identity's T test images (probes possibly protected or
    transformed, gallery clean). Feed distractor embeddings with :meth:`update` in any chunking; memory is
    O(I * T * chunk), independent of the gallery size.
    """

    def __init__(self, probes: torch.Tensor, gallery: torch.Tensor):
        n_id, t, _ = probes.shape
        self.shape = (n_id, t)
        self.probes = F.normalize(probes.double(), dim=-1).reshape(n_id * t, -1)
        self.genuine = _pair_scores(probes, gallery).reshape(n_id * t, t)
        self._bar = self.genuine + TIE_TOLERANCE
        self.above = torch.zeros(n_id * t, t, dtype=torch.long)

    def scores(self, distractors: torch.Tensor, normalized: bool = False) -> torch.Tensor:
        """Similarities (I*T, chunk) of the probes to a chunk of distractors."""
        d = distractors.double() if normalized else F.normalize(distractors.double(), dim=-1)
        return cosine_scores(self.probes, d, normalized=True)

    def update(self, distractors: torch.Tensor, normalized: bool = False) -> None:
        self.add_scores(self.scores(distractors, normalized))

    def add_scores(self, sims: torch.Tensor) -> None:
        """Count a chunk given its similarities to the probes, (I*T, chunk) — to share one matmul."""
        for j in range(self.shape[1]):
            self.above[:, j] += (sims > self._bar[:, j:j + 1]).sum(dim=1)

    def genuine_pairs(self) -> torch.Tensor:
        """The genuine scores of every ordered pair (i, j), i != j, flattened (I * T * (T - 1))."""
        n_id, t = self.shape
        return self.genuine.view(n_id, t, t)[:, ~torch.eye(t, dtype=torch.bool)].flatten()

    def hits(self, ks: tuple[int, ...]) -> tuple[dict[int, torch.Tensor], int]:
        """Per-identity rank-k hit counts ``{k: (I,) long}`` over the ordered pairs (i, j), i != j, and the
        number of trials per identity, T * (T - 1)."""
        n_id, t = self.shape
        rank = self.above.view(n_id, t, t)
        off_diag = ~torch.eye(t, dtype=torch.bool)
        return {k: ((rank < k) & off_diag).sum(dim=(1, 2)) for k in ks}, t * (t - 1)


def identification_hits(probes: torch.Tensor, gallery: torch.Tensor, distractors: torch.Tensor,
                        ks: tuple[int, ...] = (1, 5, 10)) -> tuple[dict[int, torch.Tensor], int]:
    """Rank-k hits of one-enrolled-image identification with distractors.

    probes, gallery: (I, T, D) embeddings of each identity's T test images (probes possibly protected,
    gallery clean); distractors: (M, D). For every identity and ordered pair (i, j), i != j, the gallery is
    {gallery[j]} plus all distractors, ranked by cosine similarity to probes[i]; the pair is a hit at k when
    gallery[j] is among the top k (ties go to the genuine image). Returns per-identity hit counts
    ``{k: (I,) long}`` and the number of trials per identity, T * (T - 1).
    """
    counter = RankCounter(probes, gallery)
    counter.update(distractors)
    return counter.hits(ks)


def rates_from_hits(clean: RankCounter, protected: RankCounter, ks: tuple[int, ...]) -> dict[str, float]:
    """Clean top-k accuracy and PSR@k = 1 - hits@k / trials from the counters of clean and protected probes."""
    clean_hits, trials = clean.hits(ks)
    prot_hits, _ = protected.hits(ks)
    total = trials * clean.shape[0]
    out = {f"clean_top{k}": fraction(clean_hits[k].sum().item(), total) for k in ks}
    out.update({f"psr_top{k}": fraction(total - prot_hits[k].sum().item(), total) for k in ks})
    return out


def fraction(count: int, total: int) -> float:
    """count / total from whole numbers, correctly rounded (0.315, never 1 - 0.685 = 0.31499999999999995);
    nan when there is nothing to count."""
    return int(count) / int(total) if total else float("nan")


def protection_rates(clean: torch.Tensor, protected: torch.Tensor, distractors: torch.Tensor,
                     ks: tuple[int, ...] = (1, 5, 10), gallery: torch.Tensor | None = None) -> dict[str, float]:
    """Clean top-k accuracy and protection success rate PSR@k = 1 - hits@k / trials.

    clean, protected: (I, T, D) embeddings of clean and protected probes; distractors: (M, D); gallery:
    the enrolled images (I, T, D), the clean probes themselves by default (the paper's protocol; a
    different gallery serves probes that went through a transform while enrolment did not).
    """
    gallery = clean if gallery is None else gallery
    counters = RankCounter(clean, gallery), RankCounter(protected, gallery)
    for c in counters:
        c.update(distractors)
    return rates_from_hits(*counters, ks)


class Histogram:
    """A 65536-bin histogram of scores on [lo, hi), plus an underflow and an overflow bin (cosine scores can
    leave [-1, 1] by rounding). Bins are numbered in increasing score order: 0 below ``lo``, 1..BINS, BINS + 1."""

    BINS = 1 << 16

    def __init__(self, lo: float = -1.0, hi: float = 1.0):
        self.lo, self.hi = lo, hi
        self.counts = torch.zeros(self.BINS + 2, dtype=torch.long)
        self.n = 0

    def bins(self, scores: torch.Tensor) -> torch.Tensor:
        scaled = (scores.double().flatten() - self.lo) * (self.BINS / (self.hi - self.lo))
        return scaled.floor_().clamp_(-1, self.BINS).long() + 1

    def add(self, scores: torch.Tensor) -> None:
        self.counts += torch.bincount(self.bins(scores), minlength=self.BINS + 2)
        self.n += scores.numel()

    def locate(self, rank: int) -> tuple[int, int]:
        """The bin holding the score of 0-based descending ``rank`` (< n), and the rank within that bin."""
        above = torch.cumsum(self.counts.flip(0), 0).flip(0) - self.counts  # scores in higher bins
        b = int(torch.nonzero((above <= rank) & (rank < above + self.counts))[0])
        return b, rank - int(above[b])

    def bin_range(self, b: int) -> tuple[float, float] | None:
        """[lo, hi) of an inner bin; None for the under- and overflow bins."""
        if not 1 <= b <= self.BINS:
            return None
        width = (self.hi - self.lo) / self.BINS
        return self.lo + (b - 1) * width, self.lo + b * width


def ranked_scores(first: Histogram, ranks: list[int], rescan: Callable[[], Iterable[torch.Tensor]],
                  cap: int = 1 << 20) -> dict[int, float]:
    """Exact scores at 0-based descending ``ranks`` of a stream of scores, in bounded memory.

    ``first`` is the histogram of the whole stream (built during the caller's own pass); ``rescan()`` streams
    the same scores again, in any chunking. One more pass keeps only the scores in the bins that hold the
    wanted ranks; a bin with more than ``cap`` scores is not kept but histogrammed again over its own range,
    one pass per level, until it is small enough (or all its scores are equal).
    """
    todo = {r: ([(first, first.locate(r)[0])], first.locate(r)[1]) for r in ranks}
    out: dict[int, float] = {}
    while todo:
        refine = {}
        for r, (chain, _) in todo.items():
            h, b = chain[-1]
            span = h.bin_range(b)
            if h.counts[b] > cap and span is not None:
                refine[r] = Histogram(*span)
        # buffers sized by the histogram, allocated before the pass: nothing small outlives a chunk, so the
        # allocator can hand each chunk's large temporaries back (no heap growth over a million distractors)
        kept = {r: torch.empty(int(todo[r][0][-1][0].counts[todo[r][0][-1][1]]), dtype=torch.float64)
                for r in todo if r not in refine}
        filled = dict.fromkeys(kept, 0)
        spread = {r: torch.tensor([float("inf"), float("-inf")], dtype=torch.float64) for r in refine}
        for scores in rescan():
            scores = scores.double().flatten()
            for r, (chain, _) in todo.items():
                member = torch.ones_like(scores, dtype=torch.bool)
                for h, b in chain:
                    member &= h.bins(scores) == b
                selected = scores[member]
                if r in kept:
                    if filled[r] + selected.numel() > kept[r].numel():  # a rescan that rounded differently
                        kept[r] = torch.cat([kept[r], torch.empty(selected.numel(), dtype=torch.float64)])
                    kept[r][filled[r]:filled[r] + selected.numel()] = selected
                    filled[r] += selected.numel()
                elif selected.numel():
                    refine[r].add(selected)
                    spread[r][0] = torch.minimum(spread[r][0], selected.min())
                    spread[r][1] = torch.maximum(spread[r][1], selected.max())
        for r, values in kept.items():
            out[r] = torch.sort(values[:filled[r]], descending=True).values[todo[r][1]].item()
        next_todo = {}
        for r, h in refine.items():
            if spread[r][0] == spread[r][1]:  # one value repeated more than cap times
                out[r] = spread[r][0].item()
                continue
            b, within = h.locate(todo[r][1])
            next_todo[r] = (todo[r][0] + [(h, b)], within)
        todo = next_todo
    return out


def far_ranks(n_impostors: int, fars: tuple[float, ...]) -> dict[float, int | None]:
    """For each FAR, the 0-based descending rank of the impostor score the threshold sits on (None: above
    every impostor count allowed — the threshold is then the lowest impostor score)."""
    return {far: (int(far * n_impostors) if int(far * n_impostors) < n_impostors else None) for far in fars}


def thresholds_at_far(first: Histogram, fars: tuple[float, ...], rescan: Callable[[], Iterable[torch.Tensor]],
                      lowest: float) -> dict[float, float]:
    """The verification threshold at each FAR from the impostor scores' histogram: the score at the FAR's
    rank plus an epsilon (so that score itself is rejected), or ``lowest`` (the lowest impostor score) when the
    FAR allows every impostor."""
    ranks = far_ranks(first.n, fars)
    values = ranked_scores(first, sorted({r for r in ranks.values() if r is not None}), rescan)
    return {far: lowest if rank is None else values[rank] + 1e-12 for far, rank in ranks.items()}


def tar_at_far(genuine: torch.Tensor, impostor: torch.Tensor,
               fars: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4)) -> dict[float, tuple[float, float]]:
    """Verification: ``{far: (threshold, TAR)}`` from genuine and impostor similarity scores.

    The threshold is the smallest score that at most ``far`` of the impostor scores reach (``score >= t``
    counts as a match); TAR is the fraction of genuine scores that reach it. With fewer than ``1 / far``
    impostor scores the threshold is the highest impostor score plus an epsilon (FAR 0 at that size).
    """
    impostor = impostor.double().flatten()
    histogram = Histogram()
    histogram.add(impostor)
    lowest = impostor.min().item() if len(impostor) else 0.0
    gen = genuine.double().flatten()
    return {far: (thr, fraction((gen >= thr).sum().item(), gen.numel()))
            for far, thr in thresholds_at_far(histogram, fars, lambda: [impostor], lowest).items()}


def genuine_scores(probes: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """Cosine scores of every ordered pair (i, j), i != j, of an identity's probes and gallery images,
    flattened (I * T * (T - 1)) — the same kernel as the ranking's (:func:`cosine_scores`)."""
    t = probes.shape[1]
    return _pair_scores(probes, gallery)[:, ~torch.eye(t, dtype=torch.bool)].flatten()


def verification_scores(probes: torch.Tensor, gallery: torch.Tensor,
                        distractors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine scores of the identification trials read as verification pairs.

    genuine: :func:`genuine_scores`; impostor: every probe against every distractor (I * T * M).
    """
    return genuine_scores(probes, gallery), cosine_scores(probes.flatten(0, -2), distractors).flatten()


def image_quality(clean: torch.Tensor, protected: torch.Tensor) -> dict[str, float]:
    """PSNR (dB) and SSIM of protected against clean uint8 images (B, 3, H, W), averaged over images, and
    LPIPS when its AlexNet weights are present (:mod:`opom.evaluation.lpips`); else ``lpips_unavailable`` says
    why."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    from opom.evaluation.lpips import lpips_distance, lpips_unavailable

    x, y = clean.double() / 255.0, protected.double() / 255.0
    psnr = peak_signal_noise_ratio(y, x, data_range=1.0, reduction="none", dim=(1, 2, 3))
    # SSIM in float32: its Gaussian filtering in float64 has no fast CPU kernel (20x slower), and the two agree
    # to ~1e-7
    ssim = structural_similarity_index_measure(y.float(), x.float(), data_range=1.0, reduction="none")
    out = {"psnr": psnr.mean().item(), "ssim": ssim.mean().item()}
    lpips = lpips_distance(clean, protected)
    if lpips is not None:
        out["lpips"] = lpips
    else:
        out["lpips_unavailable"] = lpips_unavailable()
    return out
