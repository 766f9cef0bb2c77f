"""Find faces in a photo or frame, and choose which of them to protect.

Detection is the framework's (:class:`opom.data.prepare.FaceDetector`, facenet-pytorch MTCNN): the image is
downscaled to ``max_side`` for the detector and the boxes / landmarks are mapped back to full resolution.
Choosing: ``all`` faces, the ``largest`` one, or those that ``match`` the enrolled person (cosine similarity
of a recognition model's embedding to the person's mean enrolment embedding, at that model's threshold).
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
    """Which detections count as faces."""

    min_score: float = 0.9  # MTCNN face probability
    min_face_size: int = 24  # shorter box side, full-resolution pixels
    max_side: int = 1024  # longer side of the copy the detector sees

    def validate(self) -> DetectSettings:
        if not 0 <= self.min_score <= 1:
            raise UserError(f"min_score must be a probability in [0, 1], got {self.min_score}")
        if self.min_face_size < 0:
            raise UserError(f"min_face_size must be >= 0 pixels, got {self.min_face_size}")
        if self.max_side < 64:
            raise UserError(f"max_side must be at least 64 pixels, got {self.max_side}")
        return self


def detect_faces(rgb: np.ndarray, detector, settings: DetectSettings = DetectSettings()) -> list[Face]:
    """Faces of an upright RGB uint8 image with score >= ``min_score`` and size >= ``min_face_size``."""
    small, scale = detection_view(rgb, settings.max_side)
    boxes, scores, landmarks = detector.detect(small)
    if not len(boxes):
        return []
    sx, sy = scale
    boxes = np.asarray(boxes, float) / np.array([sx, sy, sx, sy])
    landmarks = to_full_resolution(landmarks, scale)
    faces = [Face(b, float(s), p) for b, s, p in zip(boxes, scores, landmarks, strict=True)]
    return [f for f in faces if f.score >= settings.min_score and f.size >= settings.min_face_size]


def align(rgb: np.ndarray, face: Face, template) -> tuple[np.ndarray, np.ndarray]:
    """The face's aligned crop (uint8 HxWx3) and the 2x3 source -> crop matrix."""
    return warp_to_template(rgb, face.landmarks, template)


class FaceMatcher:
    """Cosine similarity of faces to an enrolled person's mean embedding, with a recognition model.

    ``model`` is a zoo :class:`~opom.models.zoo.FaceModel` (RGB [0, 1] aligned crops -> embeddings);
    ``reference`` the person's L2-normalised mean embedding; a face matches at ``similarity >= threshold``.
    """

    def __init__(self, model, reference, threshold: float, name: str = ""):
        import torch

        self.model, self.threshold, self.name = model, float(threshold), name
        ref = torch.as_tensor(np.asarray(reference, dtype=np.float32))
        self.reference = ref / ref.norm().clamp_min(1e-12)

    def similarities(self, crops: list[np.ndarray]) -> np.ndarray:
        """Cosine similarity of each aligned uint8 crop (HxWx3 RGB) to the reference."""
        import torch
        import torch.nn.functional as F

        if not crops:
            return np.zeros(0)
        x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0
        with torch.no_grad():
            emb = F.normalize(self.model(x).float(), dim=1)
        return (emb @ self.reference).numpy().astype(np.float64)


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
