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


@pytest.mark.parametrize("method,attack", [("convex_hull", FIM(eps=8, iterations=5)),
                                           ("convex_hull", DFANetMI(eps=8, iterations=3)),
                                           ("random_noise", FIM(eps=8))], ids=["fim", "dfanet", "noise"])
def test_a_mask_store_holds_one_batch_and_crafts_the_same_masks(tmp_path, method, attack):
    """With a mask store the parameter is the batch being crafted; the masks (read from the store's file) are the
    in-memory ones bit for bit, and the store leaves no file behind."""
    from opom.mask_store import MaskStore

    protection = _protection()
    make = (lambda: METHODS[method](warmup=2)) if method == "convex_hull" else METHODS[method]
    iterations = attack.iterations if make().crafts else 1
    shapes = []

    class Spy(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            shapes.append(tuple(module.masks.shape))

    results = []
    for store in (None, MaskStore(tmp_path, protection.num_identities, 8)):
        torch.manual_seed(0)
        module = MaskCrafter(TinyNet(), make(), attack, protection.num_identities, image_size=8, mask_store=store)
        trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                            enable_model_summary=False, callbacks=[Spy()] if store else [])
        trainer.fit(module, datamodule=ProtectionDataModule(protection, 2, iterations))
        results.append(module.all_masks().clone())
    memory, stored = results
    assert memory.abs().max() > 0 and torch.equal(memory, stored)
    assert set(shapes) == {(2, 3, 8, 8), (1, 3, 8, 8)}  # batches of 2, 2 and 1 identities
    assert list(tmp_path.iterdir()) == []


def test_a_mask_store_writes_the_mask_file_that_save_masks_writes(tmp_path):
    from opom import mask_store as store_module
    from opom.mask_store import MaskStore
    from opom.masks import MaskSet, load_masks, mask_metadata, save_masks

    masks = torch.randn(7, 3, 8, 8)
    store = MaskStore(tmp_path / "work", 7, 8)
    for start in range(0, 7, 3):
        store.write(start, masks[start:start + 3])
    ms = MaskSet(store.masks, [f"p{i}" for i in range(7)], "arcface", "convex_hull", "fim", 8.0, image_size=8,
                 extra={"config": {"seed": 0}})
    save_masks(tmp_path / "plain.safetensors", ms)
    chunk = store_module.CHUNK_BYTES
    store_module.CHUNK_BYTES = 2 * 3 * 8 * 8 * 4  # two masks per chunk: several chunks
    try:
        store.save(tmp_path / "stored.safetensors", mask_metadata(ms))
    finally:
        store_module.CHUNK_BYTES = chunk
    plain, stored = load_masks(tmp_path / "plain.safetensors"), load_masks(tmp_path / "stored.safetensors")
    assert torch.equal(stored.masks, masks) and torch.equal(plain.masks, masks)
    assert stored.identities == plain.identities and stored.extra == plain.extra and stored.eps == plain.eps
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.safetensors", "stored.safetensors", "work"]


def test_mask_store_choices(tmp_path):
    from opom.errors import ConfigError
    from opom.mask_store import MaskStore, choose_mask_store

    assert choose_mask_store("memory", tmp_path, 10**6, 112) is None
    assert choose_mask_store("auto", tmp_path, 500, 112) is None
    assert isinstance(choose_mask_store("auto", tmp_path, 20_000, 112), MaskStore)
    assert isinstance(choose_mask_store("disk", tmp_path, 5, 8), MaskStore)
    with pytest.raises(ConfigError, match="crafting.mask_store must be one of auto, memory, disk"):
        choose_mask_store("ram", tmp_path, 5, 8)
    with pytest.raises(ConfigError, match="does not fit"):
        MaskCrafter(TinyNet(), METHODS["class_center"](), FIM(), 3, image_size=8,
                    mask_store=MaskStore(tmp_path, 4, 8))
