"""Where each face model looks: its input crop as a fixed transform of the canonical (ArcFace 112) frame.

Every model of the zoo reads its input from an aligned canvas (:class:`opom.data.alignment.Canvas`) by one affine
warp: canvas -> canonical frame -> the model's input pixels. The second step is the model's *crop*, a 2x3 matrix
from canonical pixel coordinates to input pixel coordinates (pixel centres at integers, as OpenCV):

- ``arcface_112``: the canonical crop itself (insightface / ArcFace / SFace / MobileFace alignment), 112x112.
- ``resize``: the canonical crop resized to the model's input size (e.g. FaceNet's 160x160; an approximation for
  models trained on detector boxes).
- ``dlib_chip``: dlib's 150x150 face chip (``get_face_chip``, padding 0.25), which dlib computes from its own
  5 landmarks (eye corners, nose base). Measured on the 30 faces of the real test photos
  (``experiments/real_transfer/calibrate_crops.py``): the median chip transform; single faces put the template
  points within 4.5 px (median) of it. It reaches ~6 canonical px below the 112 crop, so it needs a canvas.
- ``hse_box``: the HSE authors' face box (MTCNN box plus 10 px, squared; ``facial_analysis.py``) resized to
  224x224: on the same faces a square of side 113.97 canonical px centred at (59.91, 62.28). Upright in the
  aligned frame (upright in the photo in the original; the same for faces without roll).
- ``canvas``: the whole canvas, for models that align the face themselves (dlib's own pipeline).
"""

from __future__ import annotations

import numpy as np

from opom.errors import ConfigError

CANONICAL = 112
# canonical -> dlib's 150x150 chip (median over the real test faces; see the module docstring)
DLIB_CHIP_150 = np.array([[1.5582, 0.0527, -14.6086], [-0.0527, 1.5582, -33.4647]])
# HSE box in the canonical frame: centre (x, y) and side
HSE_BOX = (59.906, 62.283, 113.966)

CROPS = ("arcface_112", "resize", "dlib_chip", "hse_box", "canvas")


def _box(cx: float, cy: float, side: float, size: int) -> np.ndarray:
    """A square box (continuous coordinates, centre and side) stretched onto ``size`` pixels, as cv2.resize."""
    k = size / side
    return np.array([[k, 0.0, -k * (cx - side / 2) - 0.5], [0.0, k, -k * (cy - side / 2) - 0.5]])


def crop_matrix(crop: str, input_size: int) -> np.ndarray:
    """2x3 matrix from canonical pixel coordinates to the model's input pixels (``input_size`` square)."""
    if crop == "arcface_112":
        if input_size != CANONICAL:
            raise ConfigError(f"crop 'arcface_112' is {CANONICAL}x{CANONICAL}; use crop 'resize' for {input_size}")
        return np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    if crop == "resize":
        return _box((CANONICAL - 1) / 2, (CANONICAL - 1) / 2, CANONICAL, input_size)
    if crop == "dlib_chip":
        return DLIB_CHIP_150 * (input_size / 150.0)
    if crop == "hse_box":
        return _box(*HSE_BOX, input_size)
    raise ConfigError(f"unknown crop {crop!r}; choose one of {', '.join(CROPS)}")


def compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """2x3 affine matrices: ``b`` first, then ``a``."""
    return (np.vstack([a, [0.0, 0.0, 1.0]]) @ np.vstack([b, [0.0, 0.0, 1.0]]))[:2]
