"""The transfer extensions of crafting: transforms, budgets, DFANet's sites, per-photo refinement."""

import numpy as np
import pytest
import torch
from helpers import TinyNet
from torch import nn

from opom.attack import FIM, Budget, select_dfanet_sites, texture_map
from opom.data.alignment import Canvas, face_region
from opom.errors import ConfigError
from opom.refine import fit_ssim
from opom.transforms import TRANSFORMS, RandomTransforms


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_each_transform_keeps_the_shape_is_differentiable_and_seeded(name):
    x = torch.rand(2, 3, 48, 48, requires_grad=True)
    t = RandomTransforms([name], p=1.0, seed=3)
    y = t(x)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.abs().sum() > 0
    t.reseed(3)
    assert torch.equal(t(x), y)  # the same seed draws the same transform
    assert not torch.allclose(y, x)  # it did something


def test_no_transform_at_p_zero_and_unknown_names_are_refused():
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(RandomTransforms(["jitter", "blur"], p=0.0)(x), x)
    assert not RandomTransforms([])
    with pytest.raises(ConfigError, match="unknown transform 'sharpen'"):
        RandomTransforms(["sharpen"])


def test_face_region_covers_the_face_and_spares_the_background():
    r = face_region(Canvas(56, 1))
    assert r.shape == (224, 224) and r.min() == 0 and r.max() == 1
    assert r[56 + 64, 56 + 56] == 1  # face centre (canonical 56, 64)
    assert r[5, 5] == 0 and r[220, 112] == 0  # corner, neck below the chin
    assert np.allclose(face_region(Canvas(56, 2))[::2, ::2], r, atol=0.2)  # the same region at twice the scale


def test_budget_limits_the_region_and_the_colour():
    eps = 8 / 255
    delta = (torch.rand(2, 3, 16, 16) * 2 - 1) * eps
    region = torch.zeros(16, 16)
    region[4:12, 4:12] = 1
    out = Budget(region).apply_(delta.clone(), eps)
    assert out[..., :4, :].abs().max() == 0 and torch.equal(out[..., 4:12, 4:12], delta[..., 4:12, 4:12])
    luma_w = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
    grey = Budget(chroma=0.0).apply_(delta.clone(), eps)
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])  # luma only
    assert torch.allclose((grey * luma_w).sum(1), (delta * luma_w).sum(1), atol=1e-7)  # the same brightness change
    assert grey.abs().max() <= eps + 1e-7
    with pytest.raises(ConfigError):
        Budget(chroma=1.5)


def half_textured(flat_left: bool, n: int = 3, size: int = 32) -> torch.Tensor:
    """(n, 3, size, size) photos: one half flat grey, the other half noise."""
    g = torch.Generator().manual_seed(int(flat_left))
    x = torch.full((n, 3, size, size), 0.5)
    half = slice(size // 2, size) if flat_left else slice(0, size // 2)
    x[..., half] = torch.rand(n, 3, size, size // 2, generator=g)
    return x


def test_texture_map_is_low_on_flat_skin_and_high_on_texture():
    tex = texture_map(half_textured(flat_left=True))
    assert tex.shape == (3, 1, 32, 32) and 0 <= tex.min() and tex.max() <= 1
    assert tex[..., :10].max() < 0.05 and tex[..., 22:].min() > 0.95  # away from the seam


@pytest.mark.parametrize("chunk", [1, 2])
def test_texture_budget_follows_each_identitys_photos(chunk, monkeypatch):
    import opom.attack

    eps = 8 / 255
    x = torch.stack([half_textured(flat_left=True), half_textured(flat_left=False)])  # (2 identities, 3, ...)
    budget = Budget(texture=0.75).for_images(x)
    assert budget.region.shape == (2, 1, 32, 32)
    attack = FIM(eps=8, step=4, iterations=1)
    state = attack.init_state(x, None, budget)
    # the CPU update, one identity at a time or both at once: each must get its own rows of the region
    monkeypatch.setattr(opom.attack, "UPDATE_CHUNK_BYTES", chunk * 3 * x[0].numel() * x.element_size())
    masks = attack.update(state, torch.randn_like(x))
    flat, textured = masks[0, ..., :10], masks[0, ..., 22:]
    assert flat.abs().max() <= 0.25 * eps * 1.06 and textured.abs().max() > 0.99 * eps
    assert masks[1, ..., 22:].abs().max() <= 0.25 * eps * 1.06 and masks[1, ..., :10].abs().max() > 0.99 * eps
    with pytest.raises(ConfigError):
        Budget(texture=2.0)


class TwoStage(nn.Module):
    """A model whose first conv carries the whole signal (dropout there ruins the embedding), the second little."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 1)
        with torch.no_grad():
            self.b.weight.mul_(0.01)
            self.b.bias.mul_(0.01)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        return (h + self.b(h)).flatten(1)  # every feature seen: dropout after `a` changes half of them


def test_dfanet_sites_keep_the_clean_embedding_close():
    torch.manual_seed(0)
    model = TwoStage()
    images = torch.rand(4, 3, 16, 16)
    before = torch.get_rng_state()
    chosen = select_dfanet_sites(model, images, p=0.5, min_cosine=0.99)
    assert chosen == [model.b]  # the harmless site only
    assert torch.equal(torch.get_rng_state(), before)  # the caller's random stream is untouched
    net = TinyNet()
    assert select_dfanet_sites(net, images[:, :, :8, :8], 0.5) == net.dfanet_sites()  # declared sites win


def test_ssim_floor_scales_masks_down_only_when_needed():
    g = torch.Generator().manual_seed(1)
    photos = torch.full((2, 3, 32, 32), 128, dtype=torch.uint8)
    photos[:, :, 8:24, 8:24] = torch.randint(60, 200, (2, 3, 16, 16), generator=g, dtype=torch.uint8)
    masks = torch.zeros(2, 3, 32, 32)
    masks[0] = (torch.rand(3, 32, 32, generator=g) * 2 - 1) * 16 / 255
    out = fit_ssim(photos, masks, floor=0.9, box=(0, 0, 32, 32))
    assert torch.equal(out[1], masks[1])  # a zero mask already meets the floor
    nonzero = masks[0] != 0
    ratio = out[0][nonzero] / masks[0][nonzero]
    assert 0 < ratio.min() < 1 and torch.allclose(ratio, ratio[0])  # one factor for the whole mask
