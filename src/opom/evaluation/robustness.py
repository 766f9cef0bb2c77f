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


def apply_transform(images: torch.Tensor, name: str) -> torch.Tensor:
    """Apply the named transform to uint8 images (B, 3, H, W); see the module docstring for names."""
    match = _PATTERN.match(name)
    if not match:
        raise ConfigError(f"unknown robustness transform {name!r}; use jpeg<quality>, resize<factor> or blur<sigma>, "
                          f"e.g. jpeg75, resize0.5, blur1")
    kind, value = match.group(1), float(match.group(2))
    if kind == "jpeg":
        if not 1 <= value <= 100:
            raise ConfigError(f"JPEG quality must be in 1..100, got {name!r}")
        return torch.stack([decode_jpeg(encode_jpeg(img, quality=int(value))) for img in images])
    x = images.float()
    if kind == "resize":
        if not 0 < value <= 1:
            raise ConfigError(f"resize factor must be in (0, 1], got {name!r}")
        size = images.shape[-2:]
        small = F.interpolate(x, scale_factor=value, mode="bilinear", antialias=True, align_corners=False)
        x = F.interpolate(small, size=size, mode="bilinear", align_corners=False)
    else:
        if value <= 0:
            raise ConfigError(f"blur sigma must be > 0, got {name!r}")
        kernel = 2 * math.ceil(3 * value) + 1
        x = gaussian_blur(x, [kernel, kernel], [value, value])
    return x.round().clamp(0, 255).to(torch.uint8)
