import pytest
import torch
from safetensors.torch import save_file

from opom.errors import UserError
from opom.masks import MaskSet, load_masks, save_masks, save_preview


def test_mask_file_round_trip_is_self_describing(tmp_path):
    masks = (torch.rand(2, 3, 112, 112) * 2 - 1) * 8 / 255
    ms = MaskSet(masks, ["alice", "bob"], surrogate="arcface", method="convex_hull", attack="fim", eps=8.0,
                 extra={"config": {"seed": 0}})
    path = save_masks(tmp_path / "m.safetensors", ms)
    back = load_masks(path)
    assert torch.equal(back.masks, masks)
    assert back.identities == ["alice", "bob"]
    described = (back.surrogate, back.method, back.attack, back.eps, back.image_size)
    assert described == ("arcface", "convex_hull", "fim", 8.0, 112)
    assert back.template == "arcface_112" and len(back.template_points) == 5
    assert back.version and back.extra == {"config": {"seed": 0}}
    assert torch.equal(back.mask_for("bob"), masks[1])
    with pytest.raises(KeyError, match="carol"):
        back.mask_for("carol")


def test_foreign_safetensors_file_is_refused(tmp_path):
    save_file({"x": torch.zeros(1)}, tmp_path / "other.safetensors")
    with pytest.raises(UserError, match="not an opom mask file"):
        load_masks(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError):
        load_masks(tmp_path / "missing.safetensors")


def test_preview_is_a_png(tmp_path):
    path = save_preview(tmp_path / "p.png", (torch.rand(3, 3, 16, 16) * 2 - 1) * 8 / 255, eps=8)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
