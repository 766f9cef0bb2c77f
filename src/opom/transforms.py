"""Differentiable, random transforms of aligned canvases: what changes between photos and pipelines.

A universal mask meets photos it never saw: aligned a little differently, resized, blurred and re-encoded by
whatever pipeline reads them. Crafting the mask through random draws of those changes (expectation over
transformation) makes it survive them; the same transforms serve per-photo refinement. Each transform maps a batch
of canvases (B, 3, S, S) in [0, 1] to the same shape, is differentiable, and draws its randomness from a
``torch.Generator`` the caller seeds, so crafting stays reproducible.

- :class:`InputDiversity` — DI-FGSM (Xie et al., CVPR 2019): resize by a random factor, pad back at a random offset.
- :class:`AlignmentJitter` — a small random similarity (shift, rotation, scale) of the canvas: a new photo's
  alignment error moves the mask against the face.
- :class:`JpegEOT` — JPEG at a random quality, differentiable (kornia's ``jpeg_codec_differentiable``).
- :class:`ResizeEOT` — down-scale and back up (social networks, thumbnails).
- :class:`BlurEOT` — Gaussian blur of random strength.

:class:`RandomTransforms` applies each of its transforms with probability ``p`` per step, the same draw for the
whole batch of a step (a universal mask meets each photo through one pipeline at a time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from opom.errors import ConfigError


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


@dataclass
class InputDiversity:
    """Resize by a factor in ``scale`` (bilinear), then crop or zero-pad back to the canvas at a random offset."""

    scale: tuple[float, float] = (0.9, 1.1)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        size = x.shape[-1]
        new = max(2, round(size * _uniform(gen, *self.scale)))
        y = F.interpolate(x, size=(new, new), mode="bilinear", align_corners=False, antialias=new < size)
        if new >= size:
            top, left = (int(v) for v in torch.randint(0, new - size + 1, (2,), generator=gen))
            return y[..., top:top + size, left:left + size]
        pad = size - new
        top, left = (int(v) for v in torch.randint(0, pad + 1, (2,), generator=gen))
        return F.pad(y, (left, pad - left, top, pad - top))


@dataclass
class AlignmentJitter:
    """A random similarity about the canvas centre: shift up to ``shift`` canonical px, rotation up to ``rotate``
    degrees, scale within 1 +- ``scale`` (typical 5-point alignment error between photos of one person)."""

    shift: float = 2.0
    rotate: float = 3.0
    scale: float = 0.03
    pixels_per_canonical: float = 1.0  # canvas scale (2 for canvas448)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        from kornia.geometry.transform import warp_affine

        size = x.shape[-1]
        angle = math.radians(_uniform(gen, -self.rotate, self.rotate))
        s = 1 + _uniform(gen, -self.scale, self.scale)
        tx, ty = (_uniform(gen, -self.shift, self.shift) * self.pixels_per_canonical for _ in range(2))
        c = (size - 1) / 2
        a, b = s * math.cos(angle), s * math.sin(angle)
        m = torch.tensor([[a, -b, c - a * c + b * c + tx], [b, a, c - b * c - a * c + ty]], dtype=x.dtype,
                         device=x.device)
        return warp_affine(x, m.expand(x.shape[0], 2, 3), (size, size), mode="bilinear", padding_mode="border",
                           align_corners=True)


@dataclass
class JpegEOT:
    """JPEG compression at a quality drawn from ``quality``, differentiable (kornia)."""

    quality: tuple[float, float] = (50.0, 95.0)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        from kornia.enhance import jpeg_codec_differentiable

        size = x.shape[-1]
        pad = (-size) % 16  # kornia's codec needs multiples of 16
        y = F.pad(x, (0, pad, 0, pad), mode="replicate") if pad else x
        q = torch.tensor([_uniform(gen, *self.quality)], dtype=x.dtype, device=x.device)
        return jpeg_codec_differentiable(y.clamp(0, 1), q)[..., :size, :size]


@dataclass
class ResizeEOT:
    """Down-scale by a factor drawn from ``scale`` (area-like, antialiased) and back up (bilinear)."""

    scale: tuple[float, float] = (0.5, 1.0)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        size = x.shape[-1]
        new = max(8, round(size * _uniform(gen, *self.scale)))
        small = F.interpolate(x, size=(new, new), mode="bilinear", align_corners=False, antialias=True)
        return F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)


@dataclass
class BlurEOT:
    """Gaussian blur with sigma drawn from ``sigma`` (pixels)."""

    sigma: tuple[float, float] = (0.3, 1.2)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        from kornia.filters import gaussian_blur2d

        s = _uniform(gen, *self.sigma)
        k = 2 * math.ceil(3 * s) + 1
        return gaussian_blur2d(x, (k, k), (s, s), border_type="replicate")


TRANSFORMS = {"diversity": InputDiversity, "jitter": AlignmentJitter, "jpeg": JpegEOT, "resize": ResizeEOT,
              "blur": BlurEOT}


class RandomTransforms:
    """Each transform applied with probability ``p`` (one draw per call, shared by the batch), in order.

    ``transforms``: ``{name: {parameter: value}}`` with names from :data:`TRANSFORMS`, or a list of names.
    """

    def __init__(self, transforms: dict | list | tuple = (), p: float = 0.5, seed: int = 0,
                 pixels_per_canonical: float = 1.0):
        if not 0 <= p <= 1:
            raise ConfigError(f"transforms.p must be in [0, 1], got {p}")
        items = transforms.items() if isinstance(transforms, dict) else ((name, {}) for name in transforms)
        self.transforms = []
        for name, params in items:
            if name not in TRANSFORMS:
                raise ConfigError(f"unknown transform {name!r}; choose from {', '.join(TRANSFORMS)}")
            params = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(params or {}).items()}
            if name == "jitter":
                params.setdefault("pixels_per_canonical", pixels_per_canonical)
            self.transforms.append((name, TRANSFORMS[name](**params)))
        self.p, self.seed = float(p), int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def __bool__(self) -> bool:
        return bool(self.transforms)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.transforms]

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(int(seed))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for _, transform in self.transforms:
            if float(torch.rand((), generator=self.generator)) < self.p:
                x = transform(x, self.generator)
        return x
