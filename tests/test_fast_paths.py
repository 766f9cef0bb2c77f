"""The crafter's fast paths give exactly the plain answers: warm-started convex-hull projections, and the
per-identity CPU mask updates of the attacks."""

import pytest
import torch
from helpers import TinyNet

from opom.attack import FIM, DFANetMI
from opom.methods import METHODS
from opom.subspace import convex_hull_weights, project_convex


def _clustered(seed, b=4, m=6, n=8, d=32):
    g = torch.Generator().manual_seed(seed)
    center = torch.nn.functional.normalize(torch.randn(b, 1, d, generator=g, dtype=torch.float64), dim=-1)
    anchors = torch.nn.functional.normalize(center + 0.2 * torch.randn(b, n, d, generator=g, dtype=torch.float64),
                                            dim=-1)
    points = torch.nn.functional.normalize(center + 0.3 * torch.randn(b, m, d, generator=g, dtype=torch.float64),
                                           dim=-1)
    return points, anchors


@pytest.mark.parametrize("lower,upper", [(0.0, 1.0), (0.0, 0.3), (0.05, 0.5)])
def test_warm_start_from_nearby_solution_equals_cold(lower, upper):
    points, anchors = _clustered(0)
    previous = convex_hull_weights(points, anchors, lower, upper)
    moved = torch.nn.functional.normalize(points + 0.05 * torch.randn_like(points), dim=-1)
    cold = project_convex(moved, anchors, lower, upper)
    warm = project_convex(moved, anchors, lower, upper, init=previous)
    torch.testing.assert_close(warm, cold, rtol=0, atol=1e-10)
    # infeasible starting weights are projected first, the answer is the same
    bad = project_convex(moved, anchors, lower, upper, init=torch.randn_like(previous))
    torch.testing.assert_close(bad, cold, rtol=0, atol=1e-10)


def test_warm_start_shape_is_checked():
    points, anchors = _clustered(1)
    with pytest.raises(ValueError, match="init weights of shape"):
        convex_hull_weights(points, anchors, init=torch.zeros(4, 6, 3, dtype=torch.float64))


def test_convex_hull_method_warm_and_cold_give_the_same_loss():
    g = torch.Generator().manual_seed(0)
    net = TinyNet().double()
    x = torch.rand(3, 5, 3, 8, 8, generator=g, dtype=torch.float64)
    clean = torch.nn.functional.normalize(net(x.flatten(0, 1)), dim=1).view(3, 5, -1)
    warm, cold = METHODS["convex_hull"](warmup=1), METHODS["convex_hull"](warmup=1, warm_start=False)
    for it in range(5):
        adv = torch.nn.functional.normalize(net((x + 0.02 * it).flatten(0, 1)), dim=1).view(3, 5, -1)
        torch.testing.assert_close(warm.loss(adv, clean, it), cold.loss(adv, clean, it), rtol=0, atol=1e-12)
    assert "_weights" not in repr(warm) and "warm_start=True" in repr(warm)


@pytest.mark.parametrize("attack", [FIM(eps=4), DFANetMI(eps=4), DFANetMI(eps=4, normalizer="l1", decay=0.5)],
                         ids=["fim", "dfanet_reference", "dfanet_l1"])
def test_chunked_cpu_updates_equal_whole_batch_updates(attack, monkeypatch):
    """The CPU update over chunks of 1 and of 2 identities (the last one short) and the whole batch at once
    (GPUs' path): the same masks and perturbed images, bit for bit."""
    import opom.attack

    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 4, 3, 16, 16, generator=g)
    per_identity = 3 * x[0].numel() * x.element_size()
    one, two, whole = attack.init_state(x), attack.init_state(x), attack.init_state(x)
    for _ in range(4):
        grad = torch.randn(x.shape, generator=g)
        monkeypatch.setattr(opom.attack, "UPDATE_CHUNK_BYTES", per_identity)
        masks = attack.update(one, grad.clone())  # identities 0 | 1 | 2 | 3 | 4
        monkeypatch.setattr(opom.attack, "UPDATE_CHUNK_BYTES", 2 * per_identity + 1)
        paired = attack.update(two, grad.clone())  # identities 0, 1 | 2, 3 | 4
        if whole.momentum is None and isinstance(attack, DFANetMI):
            whole.momentum = torch.zeros_like(grad)
        expected = torch.empty_like(masks)
        attack._update(whole, grad.clone(), slice(None), expected)  # the whole batch at once
        assert torch.equal(masks, expected) and torch.equal(paired, expected)
        assert torch.equal(one.x_adv, whole.x_adv) and torch.equal(two.x_adv, whole.x_adv)
        assert masks.abs().max() <= 4 / 255 + 1e-7 and masks.abs().max() > 0


def _craft_tiny(**options):
    import lightning as L

    from opom.data.protection import ProtectionDataModule, ProtectionSet
    from opom.module import MaskCrafter

    g = torch.Generator().manual_seed(0)
    faces = torch.randint(0, 256, (3, 6, 3, 8, 8), generator=g, dtype=torch.uint8)
    protection = ProtectionSet([f"p{i}" for i in range(3)], faces[:, :4], faces[:, 4:], faces[0, :2])
    torch.manual_seed(0)
    module = MaskCrafter(TinyNet(), METHODS["convex_hull"](warmup=1), FIM(eps=4, iterations=3), 3, image_size=8,
                         **options)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, datamodule=ProtectionDataModule(protection, 2, 3))
    return module.masks.detach()


def test_channels_last_crafts_masks_within_budget():
    plain, nhwc = _craft_tiny(), _craft_tiny(channels_last=True)
    assert 0 < nhwc.abs().max() <= 4 / 255 + 1e-7
    assert (plain == nhwc).float().mean() > 0.5  # rounding differences only flip a few sign steps


def test_compile_is_refused_with_dfanet_dropout():
    from opom.errors import ConfigError
    from opom.module import MaskCrafter

    with pytest.raises(ConfigError, match="crafting.compile=false with attack=dfanet_mi"):
        MaskCrafter(TinyNet(), METHODS["class_center"](), DFANetMI(), 2, image_size=8, compile=True)


@pytest.mark.slow
def test_compiled_surrogate_crafts_masks_within_budget():
    masks = _craft_tiny(compile=True)
    assert 0 < masks.abs().max() <= 4 / 255 + 1e-7
