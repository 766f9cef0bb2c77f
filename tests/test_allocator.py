"""Crafting keeps freed memory for reuse (glibc), and leaves the allocator as it found it afterwards."""

import resource

import pytest
import torch

from opom import allocator


def _resident_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _big_blocks() -> list[torch.Tensor]:
    """Three 24 MB tensors, written: like a crafting step's big tensors."""
    return [torch.empty(6_000_000).fill_(1.0) for _ in range(3)]


@pytest.mark.skipif(allocator._LIBC is None, reason="glibc only")
def test_freed_big_blocks_stay_for_reuse_inside_and_go_back_after():
    """Outside, glibc gives such blocks back to the kernel when they are freed (each one mapped on its own, or
    72 MB free at the heap's top passing the trim threshold), and the next step faults them in again."""
    with allocator.reuse_freed_memory():
        for _ in range(4):  # the heap grows over the first rounds (glibc places blocks best-fit), then stays
            _big_blocks()
        blocks = _big_blocks()
        live = _resident_mb()
        del blocks
        freed = _resident_mb()
    after = _resident_mb()
    assert live - freed < 5  # freed, the blocks' memory stayed with the process
    assert freed - after > 60  # and went back to the kernel on leaving
    assert allocator._depth == 0


def test_nested_blocks_and_errors_leave_no_setting_behind():
    with pytest.raises(RuntimeError):
        with allocator.reuse_freed_memory(), allocator.reuse_freed_memory():
            raise RuntimeError("boom")
    assert allocator._depth == 0


def test_a_crafting_fit_keeps_freed_memory_only_while_it_runs(monkeypatch):
    import lightning as L
    from helpers import TinyNet

    from opom.attack import FIM
    from opom.data.protection import ProtectionDataModule, ProtectionSet
    from opom.methods import METHODS
    from opom.module import MaskCrafter

    depths = []
    monkeypatch.setattr(MaskCrafter, "on_train_batch_start", lambda self, *a: depths.append(allocator._depth))
    faces = torch.randint(0, 256, (2, 5, 3, 8, 8), dtype=torch.uint8)
    protection = ProtectionSet(["a", "b"], faces[:, :3], faces[:, 3:], faces[0, :1])
    module = MaskCrafter(TinyNet(), METHODS["class_center"](), FIM(iterations=2), 2, image_size=8)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, datamodule=ProtectionDataModule(protection, 2, 2))
    assert depths == [1, 1] and allocator._depth == 0
