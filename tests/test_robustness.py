import pytest
import torch

from opom.errors import ConfigError
from opom.evaluation.robustness import apply_transform


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(2, 3, 14, 14, generator=g), size=(112, 112), mode="bilinear")
    return (smooth * 255).to(torch.uint8)


def test_jpeg_loses_more_at_lower_quality(images):
    errors = [(apply_transform(images, f"jpeg{q}").float() - images.float()).abs().mean().item() for q in (95, 75, 50)]
    assert 0 < errors[0] < errors[1] < errors[2]
    assert apply_transform(images, "jpeg75").shape == images.shape


def test_resize_and_blur_keep_shape_and_smooth_noise(images):
    noisy = (images.float() + 20 * torch.randn_like(images.float())).clamp(0, 255).to(torch.uint8)
    for name in ("resize0.5", "blur1"):
        out = apply_transform(noisy, name)
        assert out.shape == noisy.shape and out.dtype == torch.uint8
        assert (out.float() - images.float()).abs().mean() < (noisy.float() - images.float()).abs().mean()
    assert torch.equal(apply_transform(images, "resize1"), images)


@pytest.mark.parametrize("name", ["png", "jpeg0", "jpeg101", "resize2", "blur0", "resize"])
def test_bad_transform_names_are_clear(images, name):
    with pytest.raises(ConfigError, match="jpeg|resize|blur"):
        apply_transform(images, name)
