"""facenet-pytorch's ``InceptionResnetV1`` (FaceNet, VGGFace2 / CASIA-WebFace weights) without any download.

facenet-pytorch fetches its weights on first use into ``<torch home>/checkpoints/`` (``$TORCH_HOME``, else
``$XDG_CACHE_HOME/torch``, else ``~/.cache/torch``). :func:`load_inception_resnet_v1` only ever reads: it
looks there (and in ``torch.hub.get_dir()/checkpoints``, where torchvision-style caches put weights) and,
when the file is absent, says which file to place where.

Preprocessing (the zoo entry declares it): 160x160 aligned RGB (MTCNN crops), ``(x - 127.5) / 128`` on 0..255 —
mean 0.5, std 128/255 on [0, 1] images. The model returns L2-normalised 512-d embeddings.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from opom.models.arch.checkpoint import MissingCheckpointError, load_into, read_state

_RELEASE = "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/"
# pretrained name -> (file facenet-pytorch caches, classes of the classifier stored in it)
FACENET_WEIGHTS: dict[str, tuple[str, int]] = {
    "vggface2": ("20180402-114759-vggface2.pt", 8631),
    "casia-webface": ("20180408-102900-casia-webface.pt", 10575),
}


def facenet_torch_home() -> Path:
    """The torch home facenet-pytorch caches into (its own ``get_torch_home`` logic, without creating it)."""
    default = os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(os.path.expanduser(os.getenv("TORCH_HOME", default)))


def facenet_weight_paths(pretrained: str) -> list[Path]:
    """Where the ``pretrained`` weights are looked for, first choice first: facenet-pytorch's own cache file,
    then the same name under ``torch.hub.get_dir()/checkpoints``."""
    if pretrained not in FACENET_WEIGHTS:
        raise ValueError(f"facenet-pytorch has pretrained weights {sorted(FACENET_WEIGHTS)}, not {pretrained!r}")
    filename = FACENET_WEIGHTS[pretrained][0]
    paths = [facenet_torch_home() / "checkpoints" / filename, Path(torch.hub.get_dir()) / "checkpoints" / filename]
    return list(dict.fromkeys(paths))


def _find_weights(pretrained: str) -> Path:
    paths = facenet_weight_paths(pretrained)
    for path in paths:
        if path.is_file():
            return path
    filename = FACENET_WEIGHTS[pretrained][0]
    alternatives = "".join(f" or {p}" for p in paths[1:])
    raise MissingCheckpointError(
        f"facenet-pytorch {pretrained!r} weights not found, and nothing is downloaded at run time. Place "
        f"{filename} (released at {_RELEASE}{filename}) at {paths[0]}{alternatives}, or pass "
        f"checkpoint=/path/to/{filename}")


def load_inception_resnet_v1(pretrained: str | None = "vggface2",
                             checkpoint: str | Path | Mapping | None = None) -> nn.Module:
    """facenet-pytorch ``InceptionResnetV1(classify=False)`` with its published weights, in eval mode.

    ``pretrained`` ('vggface2' or 'casia-webface') picks the cached file when ``checkpoint`` is not given; a
    ``checkpoint`` path (or state dict) is loaded instead when given. The released files also hold the
    classifier (``logits.weight`` / ``logits.bias``); it is loaded too, and unused by ``forward``.
    Raises :class:`~opom.models.arch.checkpoint.MissingCheckpointError` (a ``FileNotFoundError``) naming the
    expected file when it is absent.
    """
    from facenet_pytorch import InceptionResnetV1

    if checkpoint is None:
        if pretrained is None:
            raise ValueError("load_inception_resnet_v1 needs pretrained='vggface2' / 'casia-webface' or a checkpoint")
        checkpoint = _find_weights(pretrained)
    state, origin = read_state(checkpoint)
    logits = state.get("logits.weight")
    num_classes = int(logits.shape[0]) if logits is not None and logits.dim() == 2 else None
    with torch.device("meta"):  # no initialisation: every tensor comes from the checkpoint
        model = InceptionResnetV1(pretrained=None, classify=False, num_classes=num_classes)
        if num_classes is not None:  # facenet-pytorch builds the classifier only when classify=True or pretrained
            model.logits = nn.Linear(512, num_classes)
    arch = f"facenet-pytorch InceptionResnetV1 ({pretrained or 'custom'})"
    return load_into(model, state, arch, origin=origin)
