import pytest
import torch

from opom.evaluation.metrics import (
    RankCounter,
    apply_mask_uint8,
    identification_hits,
    image_quality,
    protection_rates,
    tar_at_far,
    verification_scores,
)


def _unit(*v):
    t = torch.tensor(v, dtype=torch.float64)
    return t / t.norm()


def test_uint8_truncation_matches_reference():
    images = torch.tensor([[[[10, 250, 0, 100]]]], dtype=torch.uint8)  # (1, 1, 1, 4)
    masks = torch.tensor([0.6, 8.0, -3.0, 0.99]) / 255.0
    out = apply_mask_uint8(images, masks.view(1, 1, 1, 4))
    # 10.6 -> 10 (floor, not round), 258 -> 255 (clip), -3 -> 0 (clip), 100.99 -> 100
    assert out.dtype == torch.uint8
    assert out.flatten().tolist() == [10, 255, 0, 100]


def test_masks_are_truncated_as_saved_not_rounded_first():
    images = torch.full((1, 1, 1, 4), 100, dtype=torch.uint8)
    # grey levels a hair below / at / a hair above a whole level, stored as float32 image units like saved masks
    levels = torch.tensor([2.99996, 3.0, 3.00004, -2.99996], dtype=torch.float64)
    out = apply_mask_uint8(images, (levels / 255).float().view(1, 1, 1, 4))
    # the reference: uint8(clip(100 + m)) -> 102, 103, 103, 97 (a hair below 3 is not rounded up to 3)
    assert out.flatten().tolist() == [102, 103, 103, 97]


def test_a_full_budget_mask_moves_pixels_by_exactly_eps():
    images = torch.full((1, 3, 4, 4), 100, dtype=torch.uint8)
    for sign in (1, -1):
        mask = torch.full((3, 4, 4), sign * 8 / 255, dtype=torch.float32)  # not exact in float32
        out = apply_mask_uint8(images, mask)
        assert (out.int() - 100).unique().tolist() == [sign * 8]


def test_identification_hits_known_ranks():
    e = torch.eye(4, dtype=torch.float64)
    gallery = e[:2].unsqueeze(0)  # one identity, clean test images g0 = e0, g1 = e1
    probes = torch.stack([0.6 * e[1] + 0.8 * e[2], 0.8 * e[0] + 0.6 * e[3]]).unsqueeze(0)
    # probe 0 vs g1: 0.6, beaten by d0 (0.8) and d1 (0.99) -> rank 2
    # probe 1 vs g0: 0.8, ties with d3 (ties go to the genuine image) and beats d2 (0.6) -> rank 0
    distractors = torch.stack([e[2], _unit(0, 1, 1, 0), e[3], e[0]])
    hits, trials = identification_hits(probes, gallery, distractors, ks=(1, 2, 3))
    assert trials == 2
    assert (hits[1].tolist(), hits[2].tolist(), hits[3].tolist()) == ([1], [1], [2])


def test_protection_rates_perfect_and_broken():
    torch.manual_seed(0)
    n_id, t, d = 4, 3, 16
    centers = torch.nn.functional.normalize(torch.randn(n_id, 1, d), dim=-1)
    clean = centers + 0.01 * torch.randn(n_id, t, d)
    distractors = torch.randn(50, d)
    same = protection_rates(clean, clean, distractors)
    assert same["clean_top1"] == 1.0 and same["psr_top1"] == 0.0
    flipped = protection_rates(clean, -clean, distractors)  # protected probes point away from everyone
    assert flipped["psr_top1"] == 1.0 and flipped["psr_top10"] == 1.0
    assert flipped["clean_top1"] == 1.0


def test_tar_at_far_on_known_scores():
    impostor = torch.arange(1000, dtype=torch.float64) / 1000  # 0.000 .. 0.999
    genuine = torch.tensor([0.5, 0.95, 0.995, 0.9995])
    out = tar_at_far(genuine, impostor, fars=(1e-1, 1e-2, 1e-3))
    # FAR 1e-1: 100 impostors (0.900..0.999) may pass -> threshold just above 0.899
    assert abs(out[0.1][0] - 0.899) < 1e-9 and out[0.1][1] == 0.75
    assert abs(out[0.01][0] - 0.989) < 1e-9 and out[0.01][1] == 0.5
    assert abs(out[0.001][0] - 0.998) < 1e-9 and out[0.001][1] == 0.25


def test_verification_scores_count_pairs():
    probes = torch.eye(3).repeat(2, 1).view(2, 3, 3)  # 2 identities x 3 images
    genuine, impostor = verification_scores(probes, probes, torch.eye(3)[:2])
    assert genuine.shape == (2 * 3 * 2,) and impostor.shape == (2 * 3 * 2,)
    assert torch.all(genuine == 0)  # orthogonal images of the same identity


def test_image_quality_known_values():
    clean = torch.full((2, 3, 16, 16), 100, dtype=torch.uint8)
    same = image_quality(clean, clean)
    assert same["ssim"] > 0.999 and same["psnr"] > 100
    shifted = image_quality(clean, clean + 8)  # MSE = (8/255)^2 -> PSNR = 20 log10(255/8)
    assert abs(shifted["psnr"] - 20 * torch.log10(torch.tensor(255 / 8)).item()) < 1e-6


def test_protection_rates_against_a_separate_gallery():
    torch.manual_seed(1)
    centers = torch.nn.functional.normalize(torch.randn(3, 1, 16), dim=-1)
    gallery = centers + 0.01 * torch.randn(3, 4, 16)
    distractors = torch.randn(40, 16)
    # probes that are the gallery are all found; probes that point away never are
    rates = protection_rates(torch.randn(3, 4, 16), -gallery, distractors, gallery=gallery)
    assert rates["psr_top1"] == 1.0
    same = protection_rates(gallery, gallery, distractors, gallery=gallery)
    assert same["clean_top1"] == 1.0 and same["psr_top1"] == 0.0


def test_lpips_only_when_the_alexnet_weights_are_present(tmp_path, monkeypatch):
    import torchvision

    from opom.evaluation import lpips

    clean = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    noisy = (clean.int() + torch.randint(-20, 21, clean.shape)).clamp(0, 255).to(torch.uint8)
    monkeypatch.setenv("OPOM_LPIPS_ALEXNET", str(tmp_path / "absent.pth"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    quality = image_quality(clean, noisy)
    assert "lpips" not in quality and "alexnet-owt-7be5be79.pth" in quality["lpips_unavailable"]  # says why
    weights = tmp_path / "alexnet.pth"  # stand-in weights in torchvision's layout (never downloaded here)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), weights)
    monkeypatch.setenv("OPOM_LPIPS_ALEXNET", str(weights))
    quality = image_quality(clean, noisy)
    assert quality["lpips"] > 0 and lpips.lpips_distance(clean, clean) < 1e-6


@pytest.mark.parametrize("chunk", [1, 50, 10_000])
def test_exact_duplicates_of_genuine_images_tie_and_ties_go_to_the_genuine_image(chunk):
    g = torch.Generator().manual_seed(0)
    n_id, t, d = 6, 4, 512  # real embedding sizes: matrix products of different shapes round differently
    gallery = torch.randn(n_id, t, d, generator=g)
    probes = gallery + 0.8 * torch.randn(n_id, t, d, generator=g)
    others = torch.randn(300, d, generator=g)
    plain = RankCounter(probes, gallery)
    plain.update(others)
    for a in range(n_id):
        for j in range(t):  # the gallery plus one exact duplicate of genuine image (a, j), somewhere in a chunk
            at = (a * t + j) * 11 % 301
            counter = RankCounter(probes, gallery)
            for part in torch.cat([others[:at], gallery[a, j:j + 1], others[at:]]).split(chunk):
                counter.update(part)
            rows = slice(a * t, (a + 1) * t)
            # the duplicate scores what the genuine image scores: a tie, which goes to the genuine image
            assert torch.equal(counter.above[rows, j], plain.above[rows, j])
    same = RankCounter(gallery, gallery)
    same.update(gallery.flatten(0, 1))
    assert torch.equal(same.above.view(n_id, t, t).diagonal(dim1=1, dim2=2), torch.zeros(n_id, t, dtype=torch.long))
