"""Face models by name: the preprocessing contract, and the registry of the synthetic world's models."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from opom.cache import atomic_save, config_key
from opom.errors import ConfigError, UserError
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
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UserError(f"refusing to load {str(path)!r}: it holds pickled objects beyond plain weights, which can "
                        f"run code. Re-save its state_dict (torch.save(model.state_dict(), ...)) or convert it to "
                        f".safetensors") from err
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return state


def save_face_model(model: FaceModel, path: Path, metadata: dict[str, str]) -> None:
    atomic_save(model.backbone.state_dict(), path, metadata)


# fr_train settings that change how fast a model trains, not what it learns (kept out of cache keys)
RUNTIME_TRAIN_KEYS = ("workers",)


def _training_key(spec: dict, dataset, fr_train: dict) -> dict:
    key = {k: spec.get(k) for k in ("backbone", "loss", "seed", "embedding_size")}
    key.update(data=dataset.training_key(), train={k: v for k, v in fr_train.items() if k not in RUNTIME_TRAIN_KEYS})
    return key


def trained_model_path(spec: dict, dataset, fr_train: dict, cache_dir: str | Path) -> Path:
    """Where the model that ``spec`` describes is cached once trained on ``dataset``'s training pool."""
    if dataset is None or not hasattr(dataset, "training_pool"):
        raise ConfigError(f"model {spec['name']!r} has no checkpoint and the dataset has no training pool to "
                          f"train it on: give {spec['name']}.checkpoint=/path/to/weights.safetensors")
    return Path(cache_dir).expanduser() / "models" / f"{config_key(_training_key(spec, dataset, fr_train))}.safetensors"


def _train_to_cache(spec: dict, dataset, fr_train: dict, cache_dir: str | Path, threads: int | None = None,
                    progress: bool = True) -> Path:
    from opom.models.training import train_face_model

    if threads:
        torch.set_num_threads(threads)
    path = trained_model_path(spec, dataset, fr_train, cache_dir)
    images, labels = dataset.training_pool()
    settings = {k: v for k, v in fr_train.items() if k not in RUNTIME_TRAIN_KEYS}
    trained = train_face_model(spec["backbone"], spec["loss"], images, labels, int(spec.get("seed", 0)),
                               embedding_size=int(spec.get("embedding_size", 128)), progress=progress, **settings)
    key = _training_key(spec, dataset, fr_train)
    save_face_model(trained, path, {"config": json.dumps(key, sort_keys=True, default=str)})
    return path


def prepare_models(specs: list[dict], dataset, fr_train: dict, cache_dir: str | Path, log=None) -> None:
    """Train (once) every model in ``specs`` that has no checkpoint and is not cached yet.

    With ``fr_train.workers > 1`` several models train at the same time in separate processes, each with
    an equal share of the CPU threads (on small CPU models this beats one model on all threads).
    """
    log = log or logging.getLogger("opom").info
    todo = [s for s in specs if not s.get("checkpoint")
            and not trained_model_path(s, dataset, fr_train, cache_dir).exists()]
    if not todo:
        return
    dataset.training_pool()  # render and cache the pool once, before any worker reads it
    workers = max(1, min(int(fr_train.get("workers", 1)), len(todo)))
    names = ", ".join(f"{s['name']} ({s['backbone']}, {s['loss']}, seed {s.get('seed', 0)})" for s in todo)
    log(f"training {len(todo)} face model(s) on the training pool - one time, then cached: {names}")
    if workers == 1:
        for s in todo:
            _train_to_cache(s, dataset, fr_train, cache_dir)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, torch.get_num_threads() // workers)
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        for path in pool.map(_train_to_cache, todo, [dataset] * len(todo), [fr_train] * len(todo),
                             [cache_dir] * len(todo), [threads] * len(todo), [False] * len(todo)):
            log(f"trained and cached {path.name}")


def build_face_model(spec: dict, dataset=None, fr_train: dict | None = None, cache_dir: str | Path | None = None,
                     log=None) -> FaceModel:
    """Build the face model a config entry describes, in eval mode with frozen weights.

    ``spec``: ``name``, ``backbone``, ``loss``, ``seed``, ``embedding_size`` and ``checkpoint``.
    With a checkpoint, its weights are loaded (weights only). Without one, the model is trained on the
    dataset's training pool with ``fr_train`` settings — once: it is cached under ``cache_dir`` by the
    hash of everything that determines it (see :func:`prepare_models`).
    """
    spec, fr_train = dict(spec), dict(fr_train or {})
    backbone = get_backbone(spec["backbone"], int(spec.get("embedding_size", 128)))
    model = FaceModel(backbone, name=spec["name"])
    if spec.get("checkpoint"):
        backbone.load_state_dict(_load_state_dict(Path(spec["checkpoint"]).expanduser()))
    else:
        prepare_models([spec], dataset, fr_train, cache_dir, log)
        backbone.load_state_dict(load_file(trained_model_path(spec, dataset, fr_train, cache_dir)))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
