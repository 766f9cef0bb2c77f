"""Carry a mask from aligned face space back to a full-resolution image, and measure what arrived.

A face's aligned crop is ``crop = warp(image, M)`` with ``M`` the 2x3 source -> crop matrix. The mask ``delta``
lives in crop space; every source pixel ``p`` under the crop's footprint gets ``alpha(M p) * delta(M p)``
(bilinear), where ``alpha`` is 1 inside the crop and falls linearly to 0 over ``feather`` crop pixels at its edge,
so the perturbation ends softly. Only the footprint's bounding box is computed. Several faces are combined as
``sum(alpha_i delta_i) / max(1, sum alpha_i)``, which never exceeds the largest mask where footprints overlap.

Everything here is in grey levels of an 8-bit image (0..255); :func:`add_perturbation` quantises once to the
image's bit depth. A mask has 3 channels (colour) or 1 (luminance, for grey photos).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from opom.data.alignment import invert_affine, transform_points, warp_to_template


def feather_alpha(width: int, height: int, feather: float) -> np.ndarray:
    """(height, width) float32 weights: 1 inside, falling linearly to 0 over ``feather`` pixels at the edge.

    A pixel at distance ``d`` (in pixels, centre to the nearest edge of the crop) gets ``clip((d + 0.5) / feather,
    0, 1)``; ``feather <= 0`` gives all ones.
    """
    if feather <= 0:
        return np.ones((height, width), np.float32)
    x = np.minimum(np.arange(width), np.arange(width)[::-1]).astype(np.float32)
    y = np.minimum(np.arange(height), np.arange(height)[::-1]).astype(np.float32)
    d = np.minimum(y[:, None], x[None, :])
    return np.clip((d + 0.5) / feather, 0.0, 1.0).astype(np.float32)


@dataclass
class Field:
    """One face's perturbation on a region of the image: ``image[y0:y1, x0:x1] += alpha * delta``."""

    y0: int
    y1: int
    x0: int
    x1: int
    delta: np.ndarray  # (h, w, C) float32, grey levels, already weighted by alpha; C = 3 (colour) or 1 (luminance)
    alpha: np.ndarray  # (h, w) float32


@dataclass
class Perturbation:
    """The combined perturbation of all faces, on the bounding region of their footprints only.

    ``image[y0:y1, x0:x1][footprint] += delta[footprint]``; ``delta`` is (h, w, C) float32 grey levels of 255.
    """

    y0: int
    y1: int
    x0: int
    x1: int
    delta: np.ndarray
    footprint: np.ndarray  # (h, w) bool

    @property
    def channels(self) -> int:
        return int(self.delta.shape[2])


def footprint_box(matrix, crop_size: tuple[int, int], image_hw: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """``(y0, y1, x0, x1)`` of the source pixels the crop covers (clipped to the image), or None if none."""
    w, h = crop_size
    corners = np.array([[-0.5, -0.5], [w - 0.5, -0.5], [-0.5, h - 0.5], [w - 0.5, h - 0.5]])
    src = transform_points(invert_affine(matrix), corners)
    x0, y0 = np.floor(src.min(0)).astype(int) - 1
    x1, y1 = np.ceil(src.max(0)).astype(int) + 2
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, image_hw[1]), min(y1, image_hw[0])
    if x1 <= x0 or y1 <= y0:
        return None
    return y0, y1, x0, x1


def face_field(matrix, delta_crop: np.ndarray, image_hw: tuple[int, int], feather: float = 6.0) -> Field | None:
    """The perturbation of one face: ``delta_crop`` (h, w, C) grey levels in crop space, warped onto the image.

    ``matrix`` maps source pixels to crop pixels. ``C`` is 3 (a colour mask) or 1 (a luminance mask). Returns None
    when the crop lies outside the image.
    """
    if delta_crop.ndim == 2:
        delta_crop = delta_crop[..., None]
    h, w, channels = delta_crop.shape
    box = footprint_box(matrix, (w, h), image_hw)
    if box is None:
        return None
    y0, y1, x0, x1 = box
    m = np.asarray(matrix, np.float64).copy()
    m[:, 2] += m[:, :2] @ np.array([x0, y0], np.float64)  # region pixel (u, v) = source pixel (u + x0, v + y0)
    alpha_crop = feather_alpha(w, h, feather)
    stacked = np.concatenate([delta_crop.astype(np.float32) * alpha_crop[..., None], alpha_crop[..., None]], axis=2)
    warped = cv2.warpAffine(stacked, m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    warped = warped.reshape(y1 - y0, x1 - x0, channels + 1)
    return Field(y0, y1, x0, x1, np.ascontiguousarray(warped[..., :channels]),
                 np.ascontiguousarray(warped[..., channels]))


def combine(fields: list[Field | None]) -> Perturbation | None:
    """All faces' perturbation on the bounding region of their footprints, or None when there is none.

    Overlaps: ``sum(alpha_i delta_i) / max(1, sum alpha_i)``, which never exceeds the largest mask.
    """
    fields = [f for f in fields if f is not None]
    if not fields:
        return None
    y0, x0 = min(f.y0 for f in fields), min(f.x0 for f in fields)
    y1, x1 = max(f.y1 for f in fields), max(f.x1 for f in fields)
    channels = fields[0].delta.shape[2]
    total = np.zeros((y1 - y0, x1 - x0, channels), np.float32)
    weight = np.zeros((y1 - y0, x1 - x0), np.float32)
    for f in fields:
        total[f.y0 - y0:f.y1 - y0, f.x0 - x0:f.x1 - x0] += f.delta
        weight[f.y0 - y0:f.y1 - y0, f.x0 - x0:f.x1 - x0] += f.alpha
    total /= np.maximum(weight, 1.0)[..., None]
    return Perturbation(y0, y1, x0, x1, total, weight > 0)


LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # BT.601


def add_perturbation(image: np.ndarray, p: Perturbation, levels: float = 255.0, colour: str = "rgb") -> np.ndarray:
    """``image`` (H, W[, C]) uint8/uint16 with the perturbation added under its footprint, quantised once.

    ``levels``: the image's maximum value (255 or 65535); the perturbation (grey levels of 255) is scaled by
    ``levels / 255``. ``colour`` says what the channels are:

    - ``rgb`` (RGB, RGBA): a colour perturbation is added per channel; a luminance one (C = 1) to all three
      equally, so a grey-looking photo stays grey. Alpha is untouched;
    - ``grey`` (L, LA, 16-bit grey): a luminance perturbation is added; a colour one as its luma (BT.601);
    - ``cmyk``: a colour perturbation ``d`` (RGB of Pillow's CMYK -> RGB conversion, ``R = (255 - K)(1 - C/255)``)
      becomes ``dC = -d_R * 255 / (255 - K)`` (likewise M, Y); K is untouched.

    Pixels outside the footprint are returned bit-identical.
    """
    out = image.copy()
    view = out[p.y0:p.y1, p.x0:p.x1]
    if view.ndim == 2:
        view = view[..., None]
    fp = p.footprint
    add = p.delta[fp] * np.float32(levels / 255.0)  # (K, C)
    values = view[fp].astype(np.float32)  # (K, channels)
    if colour == "grey":
        values[:, :1] += add @ LUMA[:, None] if add.shape[1] == 3 else add
    elif colour == "rgb":
        values[:, :3] += add if add.shape[1] == 3 else np.repeat(add, 3, axis=1)
    elif colour == "cmyk":
        rgb = add if add.shape[1] == 3 else np.repeat(add, 3, axis=1)
        headroom = np.maximum(np.float32(levels) - values[:, 3:4], np.float32(1.0))
        values[:, :3] -= rgb * (np.float32(levels) / headroom) * (values[:, 3:4] < levels)
    else:
        raise ValueError(f"colour must be rgb, grey or cmyk, got {colour!r}")
    view[fp] = np.clip(np.rint(values), 0, levels).astype(image.dtype)
    return out


def aligned_change(before_rgb: np.ndarray, after_rgb: np.ndarray, landmarks, template) -> np.ndarray:
    """``crop(after) - crop(before)`` (h, w, 3) int16: what a face-recognition model's alignment sees of the change."""
    a, _ = warp_to_template(before_rgb, landmarks, template)
    b, _ = warp_to_template(after_rgb, landmarks, template)
    return b.astype(np.int16) - a.astype(np.int16)


def retention(achieved: np.ndarray, intended: np.ndarray) -> float:
    """Cosine similarity of an achieved and an intended perturbation (1 = the full pattern arrived)."""
    a, t = achieved.astype(np.float64).ravel(), intended.astype(np.float64).ravel()
    # elementwise sums, not BLAS: a 37k-long dot product gains nothing from threads and suffers on a busy machine
    denom = np.sqrt(np.sum(a * a) * np.sum(t * t))
    return float(np.sum(a * t) / denom) if denom > 0 else 0.0
