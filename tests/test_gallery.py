"""Streamed galleries: chunked scoring equals the all-at-once protocol, embeddings are cached and checked."""

import numpy as np
import pytest
import torch
from helpers import TinyNet

from opom.data.gallery import FileGallery, RenderedGallery, TensorGallery, as_gallery, materialize
from opom.data.protection import ProtectionSet
from opom.evaluation.embeddings import cache_path, gallery_embeddings
from opom.evaluation.metrics import Histogram, RankCounter, identification_hits, ranked_scores, tar_at_far
from opom.evaluation.transfer import evaluate_model


def test_rank_counts_do_not_depend_on_chunking():
    g = torch.Generator().manual_seed(0)
    probes, gallery, dis = torch.randn(3, 4, 8, generator=g), torch.randn(3, 4, 8, generator=g), torch.randn(50, 8)
    dis[7] = gallery[0, 1]  # an exact tie with a genuine image: ties go to the genuine image
    whole, trials = identification_hits(probes, gallery, dis, ks=(1, 3, 10))
    counter = RankCounter(probes, gallery)
    for chunk in dis.split(7):
        counter.update(chunk)
    chunked, _ = counter.hits((1, 3, 10))
    assert trials == 12 and all(torch.equal(whole[k], chunked[k]) for k in (1, 3, 10))


def test_rank_counter_known_ranks_in_two_chunks():
    e = torch.eye(3, dtype=torch.float64)
    counter = RankCounter(torch.stack([e[0], e[1]])[None], torch.stack([e[0], 0.6 * e[0] + 0.8 * e[2]])[None])
    counter.update(torch.stack([e[0], 0.9 * e[0] + 0.1 * e[1]]))  # probe 0 scores 1.0 (ties g0) and 0.99
    counter.update(torch.stack([e[1]]))  # probe 0 scores 0, probe 1 scores 1.0
    # probe 0: g0 (1.0) is only tied -> rank 0, g1 (0.6) is beaten twice -> 2;
    # probe 1: g0 and g1 (both 0) are beaten by 0.99-distractor's 0.11 and by e1 -> 2 each
    assert counter.above.tolist() == [[0, 2], [2, 2]]


@pytest.mark.parametrize("n", [1, 10, 1000, 20_001])
@pytest.mark.parametrize("cap", [1 << 20, 5])  # a tiny cap forces re-histogramming crowded bins
def test_ranked_scores_are_exact(n, cap):
    g = torch.Generator().manual_seed(n)
    scores = torch.tanh(torch.randn(n, generator=g, dtype=torch.float64)) * 0.01 + 0.5  # crowded
    scores[: n // 3] = scores[n // 3: 2 * (n // 3)]  # duplicates
    scores[-(n // 4):] = 0.25  # one value repeated many times
    ordered = torch.sort(scores, descending=True).values
    first = Histogram()
    for part in scores.split(777):
        first.add(part)
    ranks = sorted({0, n // 2, n - 1, min(n - 1, 7)})
    passes = []

    def rescan():
        passes.append(1)
        return scores.split(333)

    values = ranked_scores(first, ranks, rescan, cap=cap)
    assert values == {r: ordered[r].item() for r in ranks}
    assert len(passes) == 1 or cap == 5  # one pass unless a bin is crowded beyond the cap


def test_tar_at_far_thresholds_are_the_sorted_impostor_scores():
    g = torch.Generator().manual_seed(1)
    impostor, genuine = torch.rand(10_000, generator=g) * 2 - 1, torch.rand(200, generator=g)
    ordered = torch.sort(impostor.double(), descending=True).values
    for far, (thr, tar) in tar_at_far(genuine, impostor).items():
        assert thr == ordered[int(far * 10_000)].item() + 1e-12
        assert tar == (genuine.double() >= thr).double().mean().item()


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _data(distractors) -> ProtectionSet:
    g = torch.Generator().manual_seed(2)
    faces = torch.randint(0, 256, (3, 6, 3, 8, 8), generator=g, dtype=torch.uint8)
    return ProtectionSet([f"p{i}" for i in range(3)], faces[:, :2], faces[:, 2:], distractors)


def test_evaluation_is_the_same_streamed_cached_or_in_memory(tmp_path):
    model = TinyNet(size=8, dim=6)
    dis = torch.randint(0, 256, (200, 3, 8, 8), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    masks = torch.full((3, 3, 8, 8), 8 / 255)
    masks[1] *= -1
    reference = evaluate_model(model, _data(dis), masks, batch_size=64, robustness=("blur1",))
    rendered = RenderedGallery(len(dis), lambda a, b: dis[a:b], {"test": "tiny"})
    streamed = evaluate_model(model, _data(rendered), masks, batch_size=16, robustness=("blur1",), chunk=13,
                              cache_dir=tmp_path, model_key={"model": "tiny"})
    assert _flat(streamed) == pytest.approx(_flat(reference), rel=1e-9, abs=1e-12)
    cached = cache_path(tmp_path, {"model": "tiny"}, rendered)
    assert cached.exists() and np.load(cached).shape == (200, 6)
    again = evaluate_model(model, _data(rendered), masks, chunk=50, cache_dir=tmp_path, model_key={"model": "tiny"})
    reference.pop("robustness")
    assert _flat(again) == pytest.approx(_flat(reference), rel=1e-9, abs=1e-12)


def test_a_stale_cache_is_detected_and_recomputed(tmp_path):
    dis = torch.randint(0, 256, (40, 3, 8, 8), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
    gallery = TensorGallery(dis)
    with gallery_embeddings(TinyNet(seed=0), gallery, tmp_path, {"m": 1}) as store:
        first = torch.cat(list(store.chunks(16)))
    # same key, other weights (e.g. a checkpoint replaced in place): the check re-embeds instead of trusting it
    with gallery_embeddings(TinyNet(seed=1), gallery, tmp_path, {"m": 1}) as store:
        second = torch.cat(list(store.chunks(16)))
        assert store.path == cache_path(tmp_path, {"m": 1}, gallery)
    assert not torch.allclose(first, second)
    assert torch.allclose(second, TinyNet(seed=1)(dis.float() / 255), atol=1e-5)


def test_uncached_embeddings_leave_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    with gallery_embeddings(TinyNet(), TensorGallery(torch.zeros(5, 3, 8, 8, dtype=torch.uint8))) as store:
        assert len(store) == 5 and store.path.exists()
    assert list(tmp_path.iterdir()) == []


def test_file_gallery_reads_in_order_and_keys_on_file_changes(tmp_path):
    from PIL import Image

    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((112, 112, 3), 40 * i, np.uint8)).save(paths[-1])
    gallery = FileGallery(paths)
    assert len(gallery) == 3 and [int(c[0, 0, 0, 0]) for c in gallery.chunks(1)] == [0, 40, 80]
    key = gallery.key
    Image.fromarray(np.full((112, 112, 3), 7, np.uint8)).save(paths[1])
    assert FileGallery(paths).key != key
    assert materialize(as_gallery(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))).shape == (2, 3, 4, 4)
