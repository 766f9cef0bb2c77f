"""Face models by name: the preprocessing contract, and the registry of the synthetic world's models."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from opom.cache import atomic_save, config_key
from opom.errors import ConfigError
from opom.models.backbones import get_backbone


class FaceModel(nn.Module):
    """A face-recognition model that takes RGB images in [0, 1], aligned to the canonical 112x112 template.

    The model's own normalisation happens inside ``forward`` so attacks never see it.
    Returns raw (un-normalised) embeddings of shape (B, D).
    """

    def __init__(self, backbone: nn.Module, mean: float = 0.5, std: float = 0.5, name: str = ""):
        super().__init__()
        self.backbone = backbone
        self.mean, self.std, self.name = mean, std, name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone((x - self.mean) / self.std)


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Weights only: safetensors, or a torch file loaded with ``weights_only=True`` (no arbitrary pickle)."""
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist; give the path of a .safetensors "
                                f"or .pt state dict (e.g. surrogate.checkpoint=/path/to/model.safetensors)")
    if path.suffix == ".safetensors":
        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return state


def save_face_model(model: FaceModel, path: Path, metadata: dict[str, str]) -> None:
    atomic_save(model.backbone.state_dict(), path, metadata)


def build_face_model(spec: dict, dataset=None, fr_train: dict | None = None, cache_dir: str | Path | None = None,
                     log=None) -> FaceModel:
    """Build the face model a config entry describes, in eval mode with frozen weights.

    ``spec``: ``name``, ``backbone``, ``loss``, ``seed``, ``embedding_size`` and ``checkpoint``.
    With a checkpoint, its weights are loaded (weights only). Without one, the model is trained on the
    dataset's training pool with ``fr_train`` settings — once: it is cached under ``cache_dir`` by the
    hash of everything that determines it.
    """
    spec = dict(spec)
    backbone = get_backbone(spec["backbone"], int(spec.get("embedding_size", 128)))
    model = FaceModel(backbone, name=spec["name"])
    if spec.get("checkpoint"):
        backbone.load_state_dict(_load_state_dict(Path(spec["checkpoint"]).expanduser()))
    else:
        if dataset is None or not hasattr(dataset, "training_pool"):
            raise ConfigError(f"model {spec['name']!r} has no checkpoint and the dataset has no training pool to "
                             f"train it on: give {spec['name']}.checkpoint=/path/to/weights.safetensors")
        fr_train = dict(fr_train or {})
        key = {k: spec.get(k) for k in ("backbone", "loss", "seed", "embedding_size")}
        key.update(data=dataset.training_key(), train=fr_train)
        path = Path(cache_dir).expanduser() / "models" / f"{config_key(key)}.safetensors"
        if path.exists():
            backbone.load_state_dict(load_file(path))
        else:
            from opom.models.training import train_face_model

            images, labels = dataset.training_pool()
            (log or logging.getLogger("opom").info)(f"training face model {spec['name']!r} ({spec['backbone']}, {spec['loss']}, seed "
                f"{spec.get('seed', 0)}) on {len(images)} images - one time, cached as {path.name}")
            trained = train_face_model(spec["backbone"], spec["loss"], images, labels, int(spec.get("seed", 0)),
                                       embedding_size=int(spec.get("embedding_size", 128)), **fr_train)
            backbone.load_state_dict(trained.backbone.state_dict())
            save_face_model(model, path, {"config": json.dumps(key, sort_keys=True, default=str)})
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
