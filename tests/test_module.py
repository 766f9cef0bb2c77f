import lightning as L
import pytest
import torch
from helpers import TinyNet

from opom.attack import FIM, DFANetMI
from opom.data.protection import ProtectionDataModule, ProtectionSet
from opom.methods import METHODS
from opom.module import MaskCrafter


def _protection(n_id=5, n=4, t=2, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    faces = torch.randint(0, 256, (n_id, n + t, 3, size, size), generator=g, dtype=torch.uint8)
    return ProtectionSet.from_identity_images({f"p{i}": faces[i] for i in range(n_id)}, n, t,
                                              torch.randint(0, 256, (6, 3, size, size), generator=g, dtype=torch.uint8))


def _craft(protection, method, attack, per_batch, dtype=torch.float64, surrogate=None):
    surrogate = TinyNet().to(dtype) if surrogate is None else surrogate
    module = MaskCrafter(surrogate, method, attack, protection.num_identities, image_size=8).to(dtype)
    iterations = attack.iterations if method.crafts else 1
    dm = ProtectionDataModule(protection, per_batch, iterations)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                        enable_model_summary=False, precision="64-true" if dtype == torch.float64 else "32-true")
    trainer.fit(module, datamodule=dm)
    return module.masks.detach().clone()


@pytest.mark.parametrize("method", ["fi_uap", "class_center", "affine_hull", "convex_hull", "random_noise"])
def test_batched_identities_equal_one_at_a_time(method):
    protection = _protection()
    attack = FIM(eps=8, iterations=7)
    make = (lambda: METHODS[method](warmup=2)) if method == "convex_hull" else METHODS[method]
    together = _craft(protection, make(), attack, 5)
    alone = _craft(protection, make(), attack, 1)
    assert together.abs().max() > 0
    assert torch.allclose(together, alone, atol=1e-9), (together - alone).abs().max()


def test_masks_are_the_only_learnable_parameter():
    module = MaskCrafter(TinyNet(), METHODS["class_center"](), FIM(), num_identities=3, image_size=8)
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    assert trainable == ["masks"]
    assert module.masks.shape == (3, 3, 8, 8)


def test_surrogate_stays_in_eval_mode():
    module = MaskCrafter(TinyNet(), METHODS["class_center"](), FIM(), num_identities=1, image_size=8)
    module.train()
    assert not module.surrogate.training


def test_random_noise_and_dfanet_masks_within_eps():
    protection = _protection(n_id=3)
    noise = _craft(protection, METHODS["random_noise"](), FIM(eps=4), 2, torch.float32)
    assert 3.5 / 255 < noise.abs().max() <= 4 / 255
    assert not torch.equal(noise[0], noise[1])  # one draw per identity
    dfanet = _craft(protection, METHODS["convex_hull"](warmup=1), DFANetMI(eps=4, iterations=3), 2, torch.float32)
    assert 0 < dfanet.abs().max() <= 4 / 255 + 1e-7


def test_an_ensemble_of_one_model_twice_crafts_that_models_masks():
    """Each member's loss enters the objective with the same weight: two copies of one model are that model."""
    protection = _protection(n_id=3)
    attack = FIM(eps=8, iterations=6)
    one = _craft(protection, METHODS["convex_hull"](warmup=2), attack, 3)
    twice = _craft(protection, METHODS["convex_hull"](warmup=2), attack, 3,
                   surrogate=[TinyNet().double(), TinyNet().double()])
    assert torch.equal(one, twice)


def test_an_ensemble_uses_every_member():
    protection = _protection(n_id=3)
    attack = FIM(eps=8, iterations=6)
    a = _craft(protection, METHODS["class_center"](), attack, 3, surrogate=TinyNet(seed=1).double())
    b = _craft(protection, METHODS["class_center"](), attack, 3, surrogate=TinyNet(seed=2).double())
    ab = _craft(protection, METHODS["class_center"](), attack, 3,
                surrogate=[TinyNet(seed=1).double(), TinyNet(seed=2).double()])
    assert not torch.equal(ab, a) and not torch.equal(ab, b)
    assert 0 < ab.abs().max() <= 8 / 255 + 1e-12


def test_dfanet_dropout_reaches_every_member_of_an_ensemble():
    from opom.attack import feature_dropout

    members = torch.nn.ModuleList([TinyNet(seed=1), TinyNet(seed=2)])
    x = torch.rand(4, 3, 8, 8)
    clean = [m(x) for m in members]
    with feature_dropout(members, 0.5):
        dropped = [m(x) for m in members]
    assert all(not torch.allclose(c, d) for c, d in zip(clean, dropped, strict=True))
    assert all(torch.equal(c, m(x)) for c, m in zip(clean, members, strict=True))  # hooks gone afterwards
