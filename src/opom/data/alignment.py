"""Five-point face alignment: a least-squares similarity onto a canonical template, then an OpenCV warp.

Coordinates are pixel centres at integers (OpenCV's convention, also MTCNN's and insightface's): the point (0, 0) is
the centre of the top-left pixel. The 5 points are, in this order: left eye centre, right eye centre (as seen in
the image), nose tip, left mouth corner, right mouth corner.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from opom.errors import UserError
from opom.masks import ARCFACE_TEMPLATE_112


@dataclass(frozen=True)
class Template:
    """Where the 5 landmarks go in an aligned crop of ``width`` x ``height`` pixels."""

    points: tuple[tuple[float, float], ...]
    width: int
    height: int
    note: str = ""

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    def array(self) -> np.ndarray:
        return np.asarray(self.points, dtype=np.float64)


def _scaled(points, factor: float) -> tuple[tuple[float, float], ...]:
    return tuple((x * factor, y * factor) for x, y in points)


SPHEREFACE_TEMPLATE_96x112 = tuple((x - 8.0, y) for x, y in ARCFACE_TEMPLATE_112)

TEMPLATES: dict[str, Template] = {
    # insightface / ArcFace / CosFace / AdaFace / SFace (OpenCV FaceRecognizerSF.alignCrop) 112x112 crops
    "arcface_112": Template(ARCFACE_TEMPLATE_112, 112, 112, "insightface arcface_dst; most FR models of the zoo"),
    # the original SphereFace / CosFace 96x112 crop (insightface's template is this one shifted 8 px right)
    "sphereface_96x112": Template(SPHEREFACE_TEMPLATE_96x112, 96, 112, "SphereFace/CosFace papers, 96 wide"),
    # FaceNet-style 160x160 input (InceptionResnetV1 of facenet-pytorch). FaceNet itself was trained on MTCNN
    # box crops with a margin, not on 5-point alignment: this scaled ArcFace template is an approximation.
    "arcface_160": Template(_scaled(ARCFACE_TEMPLATE_112, 160 / 112), 160, 160,
                            "ArcFace template scaled to 160 (approximates FaceNet's margin-box crops)"),
    "arcface_224": Template(_scaled(ARCFACE_TEMPLATE_112, 224 / 112), 224, 224, "ArcFace template scaled to 224"),
}


@dataclass(frozen=True)
class Canvas:
    """An aligned face image in the canonical similarity frame, possibly larger than the 112x112 crop.

    The canonical frame is that of the ArcFace 112x112 crop (insightface's 5-point template). A canvas extends it by
    ``margin`` canonical pixels on every side (real photo around the face, which models with wider crops look at:
    dlib's chip, HSE's detector box) and samples it with ``scale`` pixels per canonical pixel: canonical point
    ``p`` lies at canvas pixel ``scale * (p + margin)``. ``Canvas()`` is the 112x112 crop itself; ``canvas224`` is
    ``Canvas(56, 1)``, the aligned face plus 56 px of the photo around it. Every model of the zoo reads its own input
    from a canvas, differentiably (:meth:`opom.models.zoo.FaceModel.prepare`).
    """

    margin: int = 0
    scale: int = 1

    def __post_init__(self):
        if self.margin < 0 or self.scale < 1:
            raise UserError(f"a canvas needs margin >= 0 and scale >= 1, got margin {self.margin}, scale {self.scale}")

    @property
    def size(self) -> int:
        return (112 + 2 * self.margin) * self.scale

    @property
    def is_canonical(self) -> bool:
        return self.margin == 0 and self.scale == 1

    def from_canonical(self) -> np.ndarray:
        """2x3 matrix: canonical-frame pixel coordinates -> canvas pixel coordinates."""
        s = float(self.scale)
        return np.array([[s, 0.0, s * self.margin], [0.0, s, s * self.margin]])

    def face_box(self) -> tuple[float, float, float, float]:
        """Where the canonical 112x112 crop lies in the canvas: (x0, y0, x1, y1) in pixels."""
        lo = self.scale * self.margin
        return lo, lo, lo + 112 * self.scale, lo + 112 * self.scale

    def template(self) -> Template:
        points = transform_points(self.from_canonical(), ARCFACE_TEMPLATE_112)
        return Template(tuple(map(tuple, points.tolist())), self.size, self.size,
                        f"ArcFace 112 frame, margin {self.margin}, scale {self.scale}")

    def to_dict(self) -> dict:
        return {"margin": self.margin, "scale": self.scale}

    @property
    def name(self) -> str:
        """``arcface_112`` for the canonical crop, a :data:`CANVASES` name, else ``canvas_m<margin>_s<scale>``."""
        return next((n for n, c in CANVASES.items() if c == self), f"canvas_m{self.margin}_s{self.scale}")


# the face region in the canonical frame: an ellipse around the 5-point template (eyes at y 51.6, mouth at 92.3,
# inter-ocular distance 35.2): from the forehead (~1 eye distance above the eyes) to the chin (~0.7 below the
# mouth), cheek to cheek; its edge fades out over FACE_FEATHER canonical pixels
FACE_ELLIPSE = (56.0, 64.0, 42.0, 54.0)  # centre x, y, semi-axes x, y
FACE_FEATHER = 6.0


def face_region(canvas: Canvas) -> np.ndarray:
    """A soft face-shaped region (size, size) in [0, 1] on ``canvas``: 1 on the face, fading to 0 over a few pixels
    at its edge, 0 on hair, neck and background. All faces are aligned to one template, so one region fits all."""
    cx, cy, ax, ay = FACE_ELLIPSE
    coords = (np.arange(canvas.size) + 0.5) / canvas.scale - canvas.margin - 0.5  # canvas pixel -> canonical
    x, y = np.meshgrid(coords, coords)
    r = np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2)
    distance = (r - 1) * min(ax, ay)  # ~ canonical px outside the ellipse (negative inside)
    return np.clip(0.5 - distance / FACE_FEATHER, 0.0, 1.0).astype(np.float32)


CANVASES: dict[str, Canvas] = {"arcface_112": Canvas(), "canvas224": Canvas(56, 1), "canvas448": Canvas(56, 2)}


def get_template(name: str) -> Template:
    if name in CANVASES and name not in TEMPLATES:
        return CANVASES[name].template()
    if name not in TEMPLATES:
        names = ", ".join(sorted(set(TEMPLATES) | set(CANVASES)))
        raise UserError(f"unknown alignment template {name!r}; choose one of {names}")
    return TEMPLATES[name]


def similarity_transform(src_points, dst_points) -> np.ndarray:
    """The least-squares similarity (rotation, uniform scale, translation) mapping ``src`` onto ``dst``, as 2x3.

    Umeyama (1991), closed form; reflections are excluded. Minimises sum ||s R p + t - q||^2 over the point pairs,
    the same solution as ``skimage.transform.SimilarityTransform.estimate`` and insightface's ``norm_crop``.
    (OpenCV's ``estimateAffinePartial2D`` is a robust RANSAC/LMEDS fit refined on its inliers, which can drop
    points, so it is not used here.)
    """
    src = np.asarray(src_points, dtype=np.float64)
    dst = np.asarray(dst_points, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need two matching (N>=2, 2) point arrays, got {src.shape} and {dst.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("landmarks contain NaN or infinity")
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = (src_c**2).sum() / len(src)
    if src_var <= 1e-12:
        raise ValueError("degenerate landmarks: all source points coincide")
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = (s * d).sum() / src_var
    return np.hstack([scale * rot, (dst_mean - scale * rot @ src_mean)[:, None]])


def transform_points(matrix, points) -> np.ndarray:
    """Apply a 2x3 affine matrix to (N, 2) points."""
    m = np.asarray(matrix, dtype=np.float64)
    p = np.asarray(points, dtype=np.float64)
    return p @ m[:, :2].T + m[:, 2]


def invert_affine(matrix) -> np.ndarray:
    """The inverse of a 2x3 affine matrix (crop -> source, for pasting back)."""
    m = np.vstack([np.asarray(matrix, dtype=np.float64), [0.0, 0.0, 1.0]])
    return np.linalg.inv(m)[:2]


def transform_scale(matrix) -> float:
    """The uniform scale of a similarity (crop pixels per source pixel)."""
    m = np.asarray(matrix, dtype=np.float64)
    return float(np.sqrt(abs(np.linalg.det(m[:, :2]))))


def _cv2():
    try:
        import cv2
    except ImportError as err:  # pragma: no cover - depends on the install
        raise UserError("face alignment needs OpenCV: pip install opencv-python-headless") from err
    return cv2


def warp_to_template(image_hwc_uint8: np.ndarray, points5, template=ARCFACE_TEMPLATE_112, size=112,
                     border: str = "constant", antialias: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Warp the face with landmarks ``points5`` (source pixels) onto ``template``: ``(crop uint8, 2x3 matrix)``.

    ``template`` is a point list, a :class:`Template` or a name from :data:`TEMPLATES` (then ``size`` is taken
    from it); ``size`` is an int (square) or ``(width, height)``. The matrix maps source pixels to crop pixels.
    Bilinear interpolation; outside the photo the crop is black (``border="constant"``, as insightface does) or
    the edge pixels repeated (``"replicate"``). When the face is shrunk by more than 4/3 the needed region is first
    reduced with area averaging (``antialias``), so large photos do not alias; the returned matrix is unchanged.
    """
    cv2 = _cv2()
    if isinstance(template, str):
        template = get_template(template)
    if isinstance(template, Template):
        dst, (width, height) = template.array(), template.size
    else:
        dst = np.asarray(template, dtype=np.float64)
        width, height = (size, size) if isinstance(size, int) else tuple(size)
    image = np.asarray(image_hwc_uint8)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"expected an HxW or HxWxC uint8 image, got {image.dtype} {image.shape}")
    matrix = similarity_transform(points5, dst)
    modes = {"constant": cv2.BORDER_CONSTANT, "replicate": cv2.BORDER_REPLICATE}
    if border not in modes:
        raise ValueError(f"border must be one of {sorted(modes)}, got {border!r}")
    src, warp = np.ascontiguousarray(image), matrix
    scale = transform_scale(matrix)
    if antialias and scale < 0.75:
        src, warp = _shrink_region(cv2, src, matrix, scale, width, height)
    crop = cv2.warpAffine(src, warp, (width, height), flags=cv2.INTER_LINEAR, borderMode=modes[border],
                          borderValue=0)
    return crop, matrix


def _shrink_region(cv2, image: np.ndarray, matrix: np.ndarray, scale: float, width: int, height: int):
    """The part of ``image`` the crop needs, area-reduced to about the crop's scale, and the matching matrix."""
    h, w = image.shape[:2]
    corners = np.array([[-1, -1], [width, -1], [-1, height], [width, height]], dtype=np.float64)
    src_corners = transform_points(invert_affine(matrix), corners)
    pad = 2.0 / scale
    x0, y0 = np.floor(src_corners.min(0) - pad).astype(int)
    x1, y1 = np.ceil(src_corners.max(0) + pad).astype(int) + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 - x0 < 2 or y1 - y0 < 2:  # the crop lies (almost) outside the photo: nothing to gain
        return image, matrix
    region = image[y0:y1, x0:x1]
    rw, rh = max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))
    small = cv2.resize(region, (rw, rh), interpolation=cv2.INTER_AREA)
    rx, ry = rw / (x1 - x0), rh / (y1 - y0)
    # small pixel (u, v) <- region pixel ((u + .5) / rx - .5, ...) <- source pixel (+ x0, + y0)
    small_to_src = np.array([[1 / rx, 0, 0.5 / rx - 0.5 + x0], [0, 1 / ry, 0.5 / ry - 0.5 + y0], [0, 0, 1]])
    return small, matrix @ small_to_src
