"""What happens to protected photos on social media: re-encoding, rescaling and blur, as named transforms.

A transform maps uint8 images (B, 3, H, W) to uint8 images of the same shape. Names: ``jpeg<Q>`` (JPEG
re-encoding at quality Q, e.g. ``jpeg75``), ``resize<F>`` (downscale by factor F then back up, bilinear,
e.g. ``resize0.5``), ``blur<S>`` (Gaussian blur with sigma S, kernel 2*ceil(3S)+1, e.g. ``blur1``).
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torchvision.io import decode_jpeg, encode_jpeg
from torchvision.transforms.v2.functional import gaussian_blur

from opom.errors import ConfigError

_PATTERN = re.compile(r"^(jpeg|resize|blur)(\d+(?:\.\d+)?)$")


def parse_transform(name: str) -> tuple[str, float]:
    """``(kind, value)`` of a transform name; :class:`ConfigError` naming the fix for a name that cannot work
    (checked before anything is crafted: ``evaluation.robustness``)."""
    match = _PATTERN.match(str(name))
    if not match:
        raise ConfigError(f"unknown robustness transform {name!r} in evaluation.robustness; use jpeg<quality>, "
                          f"resize<factor> or blur<sigma>, e.g. 'evaluation.robustness=[jpeg75,resize0.5,blur1]'")
    kind, value = match.group(1), float(match.group(2))
    if kind == "jpeg" and not (1 <= value <= 100 and value.is_integer()):
        raise ConfigError(f"JPEG quality must be a whole number in 1..100, got {name!r} in evaluation.robustness")
    if kind == "resize" and not 0 < value <= 1:
        raise ConfigError(f"resize factor must be in (0, 1], got {name!r} in evaluation.robustness")
    if kind == "blur" and value <= 0:
        raise ConfigError(f"blur sigma must be > 0, got {name!r} in evaluation.robustness")
    return kind, value


def apply_transform(images: torch.Tensor, name: str) -> torch.Tensor:
    """Apply the named transform to uint8 images (B, 3, H, W); see the module docstring for names."""
    kind, value = parse_transform(name)
    if kind == "jpeg":
        return torch.stack([decode_jpeg(encode_jpeg(img, quality=int(value))) for img in images])
    x = images.float()
    if kind == "resize":
        size = images.shape[-2:]
        small = F.interpolate(x, scale_factor=value, mode="bilinear", antialias=True, align_corners=False)
        x = F.interpolate(small, size=size, mode="bilinear", align_corners=False)
    else:
        kernel = 2 * math.ceil(3 * value) + 1
        x = gaussian_blur(x, [kernel, kernel], [value, value])
    return x.round().clamp(0, 255).to(torch.uint8)
