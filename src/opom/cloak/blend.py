"""Carry a mask from aligned face space back to a full-resolution image, and measure what arrived.

A face's aligned crop is ``crop = warp(image, M)`` with ``M`` the 2x3 source -> crop matrix. The mask ``delta``
lives in crop space; every source pixel ``p`` under the crop's footprint gets ``alpha(M p) * delta(M p)``
(bilinear), where ``alpha`` is 1 inside the crop and falls linearly to 0 over ``feather`` crop pixels at its edge,
so the perturbation ends softly. Only the footprint's bounding box is computed. Several faces are combined as
``sum(alpha_i delta_i) / max(1, sum alpha_i)``, which never exceeds the largest mask where footprints overlap.

Everything here is in grey levels of an 8-bit image (0..255); the caller quantises once to its bit depth.
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
    delta: np.ndarray  # (h, w, 3) float32, grey levels, already weighted by alpha
    alpha: np.ndarray  # (h, w) float32


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
    """The perturbation of one face: ``delta_crop`` (h, w, 3) grey levels in crop space, warped onto the image.

    ``matrix`` maps source pixels to crop pixels. Returns None when the crop lies outside the image.
    """
    h, w = delta_crop.shape[:2]
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
    return Field(y0, y1, x0, x1, np.ascontiguousarray(warped[..., :3]), np.ascontiguousarray(warped[..., 3]))


def combine(fields: list[Field], image_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """The total perturbation ``(H, W, 3)`` float32 (grey levels) and the footprint ``(H, W)`` bool, or None."""
    fields = [f for f in fields if f is not None]
    if not fields:
        return None
    total = np.zeros((*image_hw, 3), np.float32)
    weight = np.zeros(image_hw, np.float32)
    for f in fields:
        total[f.y0:f.y1, f.x0:f.x1] += f.delta
        weight[f.y0:f.y1, f.x0:f.x1] += f.alpha
    total /= np.maximum(weight, 1.0)[..., None]
    return total, weight > 0


def add_perturbation(image: np.ndarray, perturbation: np.ndarray, footprint: np.ndarray, levels: float = 255.0
                     ) -> np.ndarray:
    """``image`` (H, W, C) uint8/uint16 with ``perturbation`` (H, W, 3, grey levels of 255) added, quantised once.

    ``levels`` is the image's maximum value (255 or 65535); the perturbation is scaled by ``levels / 255``.
    Channels: 3 or 4 (RGB, RGBA: alpha untouched) get it per channel; 1 or 2 (grey, grey+alpha) get its luma
    (BT.601 weights). Pixels outside ``footprint`` are returned bit-identical.
    """
    out = image.copy()
    channels = image.shape[2] if image.ndim == 3 else 1
    add = perturbation[footprint] * np.float32(levels / 255.0)  # (K, 3)
    if channels in (1, 2):
        add = add @ np.array([0.299, 0.587, 0.114], np.float32)
        add = add[:, None]
    colour = 3 if channels >= 3 else 1
    view = out if image.ndim == 3 else out[..., None]
    values = view[footprint][:, :colour].astype(np.float32) + add
    view_fp = view[footprint]
    view_fp[:, :colour] = np.clip(np.rint(values), 0, levels).astype(image.dtype)
    view[footprint] = view_fp
    return out


def aligned_change(before_rgb: np.ndarray, after_rgb: np.ndarray, landmarks, template) -> np.ndarray:
    """``crop(after) - crop(before)`` (h, w, 3) int16: what a face-recognition model's alignment sees of the change."""
    a, _ = warp_to_template(before_rgb, landmarks, template)
    b, _ = warp_to_template(after_rgb, landmarks, template)
    return b.astype(np.int16) - a.astype(np.int16)


def retention(achieved: np.ndarray, intended: np.ndarray) -> float:
    """Cosine similarity of an achieved and an intended perturbation (1 = the full pattern arrived)."""
    a, t = achieved.astype(np.float64).ravel(), intended.astype(np.float64).ravel()
    denom = np.linalg.norm(a) * np.linalg.norm(t)
    return float(a @ t / denom) if denom > 0 else 0.0
