import pytest
import torch
import torch.nn.functional as F
from helpers import TinyNet

from opom.attack import FIM, DFANetMI, feature_dropout
from opom.errors import ConfigError
from opom.methods import METHODS, AffineHull, ClassCenter, ConvexHull, FIUAPPlus


def _run(attack, method, model, x):
    state = attack.init_state(x)
    delta = None
    for it in range(attack.iterations):
        with torch.enable_grad():
            clean = F.normalize(model(x.flatten(0, 1)), dim=1).view(*x.shape[:2], -1).detach()
            x_adv = state.x_adv.detach().requires_grad_(True)
            adv = F.normalize(model(x_adv.flatten(0, 1)), dim=1).view(*x.shape[:2], -1)
            (g,) = torch.autograd.grad(method.loss(adv, clean, it).sum(), x_adv)
        delta = attack.update(state, g)
    return delta, state


@pytest.mark.parametrize("attack", [FIM(eps=8, iterations=6), DFANetMI(eps=8, iterations=6, dropout=0.0),
                                    DFANetMI(eps=4, iterations=6, dropout=0.0, normalizer="l1")])
@pytest.mark.parametrize("method", ["fi_uap", "fi_uap_plus", "class_center", "affine_hull", "convex_hull"])
def test_masks_within_budget_and_images_in_range(attack, method):
    torch.manual_seed(1)
    x = torch.rand(2, 4, 3, 8, 8)
    x[0, 0] = 1.0  # saturated pixels must stay in range
    delta, state = _run(attack, METHODS[method](), TinyNet(), x)
    assert delta.shape == (2, 3, 8, 8)
    assert delta.abs().max() <= attack.eps + 1e-7
    assert state.x_adv.min() >= 0 and state.x_adv.max() <= 1
    assert delta.abs().max() > 0


def test_fim_moves_the_loss_up():
    torch.manual_seed(2)
    model, x, method = TinyNet(), torch.rand(1, 5, 3, 8, 8), ClassCenter()
    with torch.no_grad():
        clean = F.normalize(model(x[0]), dim=1)[None]
        before = method.loss(clean, clean, 0)
        delta, _ = _run(FIM(eps=8, iterations=10, random_start=False), method, model, x)
        after = method.loss(F.normalize(model((x[0] + delta).clamp(0, 1)), dim=1)[None], clean, 0)
    assert after.item() > before.item() + 1e-4


def test_fim_step_is_sign_of_mean_gradient():
    attack = FIM(eps=8, step=1, iterations=1, random_start=False)
    x = torch.full((1, 2, 1, 1, 2), 0.5)
    state = attack.init_state(x)
    grad = torch.tensor([[[[[3.0, -1.0]]], [[[-1.0, -1.0]]]]])  # mean: [+1, -1]
    delta = attack.update(state, grad)
    assert torch.allclose(delta.flatten(), torch.tensor([1 / 255, -1 / 255]))


def test_dfanet_mask_is_mean_of_per_image_sign_steps():
    attack = DFANetMI(eps=8, step=1, iterations=1, random_start=False, dropout=0.0)
    x = torch.full((1, 2, 1, 1, 2), 0.5)
    state = attack.init_state(x)
    grad = torch.tensor([[[[[3.0, -1.0]]], [[[-1.0, -1.0]]]]])
    delta = attack.update(state, grad)
    # pixel 0: steps +1 and -1 -> mean 0; pixel 1: -1 and -1 -> -1
    assert torch.allclose(delta.flatten(), torch.tensor([0.0, -1 / 255]))


def test_reference_normalizer_is_one_scale_per_pixel_column():
    attack = DFANetMI(iterations=1, random_start=False, dropout=0.0)
    x = torch.full((1, 2, 3, 4, 5), 0.5)
    state = attack.init_state(x)
    grad = torch.randn(1, 2, 3, 4, 5)
    attack.update(state, grad)
    expected = grad / grad.abs().mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(state.momentum, expected)


def test_feature_dropout_is_on_inside_and_off_after():
    model = TinyNet().eval()
    x = torch.rand(2, 3, 8, 8)
    ref = model(x)
    with feature_dropout(model, 0.5):
        assert not torch.allclose(model(x), ref)
    assert torch.allclose(model(x), ref)


def test_random_start_is_seeded_and_shared_by_identities():
    a = FIM(seed=3).init_state(torch.zeros(2, 3, 3, 4, 4)).x_adv
    b = FIM(seed=3).init_state(torch.zeros(1, 3, 3, 4, 4)).x_adv
    assert torch.equal(a[0], a[1]) and torch.equal(a[0], b[0])
    assert a.abs().max() <= 8 / 255


@pytest.mark.parametrize("kwargs", [{"eps": 0}, {"eps": -1}, {"step": 0}, {"iterations": 0}])
def test_bad_attack_settings_are_clear(kwargs):
    with pytest.raises(ConfigError, match="attack"):
        FIM(**kwargs)


def test_class_center_equals_hull_with_fixed_weights():
    torch.manual_seed(0)
    clean = F.normalize(torch.randn(2, 5, 7), dim=-1)
    adv = F.normalize(torch.randn(2, 5, 7), dim=-1)
    fixed = ConvexHull(lower=0.2, upper=0.2, warmup=0).loss(adv, clean, 10)
    assert torch.allclose(ClassCenter().loss(adv, clean, 0), fixed, atol=1e-6)


def test_convex_hull_warms_up_with_class_center():
    torch.manual_seed(0)
    clean = F.normalize(torch.randn(1, 4, 6), dim=-1)
    hull = ConvexHull(warmup=5)
    # at its own vertices the hull distance is zero, the class-center distance is not
    assert hull.loss(clean, clean, 5).item() < 1e-10
    assert torch.allclose(hull.loss(clean, clean, 4), ClassCenter().loss(clean, clean, 0))


def test_affine_hull_distance_is_zero_inside():
    torch.manual_seed(0)
    clean = F.normalize(torch.randn(1, 4, 6), dim=-1)
    inside = (0.7 * clean[:, :1] + 0.6 * clean[:, 1:2] - 0.3 * clean[:, 2:3]).expand(1, 4, 6)
    assert AffineHull().loss(inside, clean, 0).item() < 1e-10


def test_fi_uap_plus_is_minus_mean_cosine():
    clean = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    adv = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    assert FIUAPPlus().loss(adv, clean, 0).item() == pytest.approx(-0.5)
