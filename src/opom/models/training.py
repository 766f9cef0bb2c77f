"""Face-recognition training: a backbone plus a margin head, as a Lightning task.

Used to train the small models of the synthetic world (cached by their config, see
:mod:`opom.models.zoo`); the same task trains any registered backbone on any labelled image tensor.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from opom.cache import atomic_save, config_key
from opom.errors import ConfigError
from opom.logs import quiet_lightning
from opom.models.backbones import get_backbone
from opom.models.heads import get_head
from opom.models.zoo import FaceModel, Preprocessing

# bump when a change to the training code changes what the cached small models learn
TRAINING_VERSION = 2


class FRTrainingTask(L.LightningModule):
    """Classification training of a :class:`FaceModel` with a training head (softmax, margins, SFace).

    Batches are uint8 images (B, 3, H, W) and identity labels; the model's own preprocessing applies.
    SGD with Nesterov momentum and a one-cycle schedule over all steps.
    """

    def __init__(self, model: FaceModel, head: nn.Module, lr: float = 0.1, weight_decay: float = 5e-4,
                 momentum: float = 0.9, warmup: float = 0.15):
        super().__init__()
        self.save_hyperparameters(ignore=["model", "head"])
        self.model, self.head = model, head

    def training_step(self, batch, batch_idx):
        images, labels = batch
        loss = self.head(self.model(images.float() / 255), labels)
        self.log("fr/loss", loss, prog_bar=True, sync_dist=True)
        return loss

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay,
                              nesterov=True)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(self.trainer, hp.warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def warmup_cosine(trainer: L.Trainer, warmup: float):
    """LR factor by step: linear warm-up over ``warmup`` of all steps, then cosine decay to zero.

    The total is read from the trainer at every step, so a run resumed with more epochs stretches the
    remaining schedule instead of failing. A plain function, so LambdaLR checkpoints store only the step
    (they stay loadable weights-only).
    """

    def factor(step: int) -> float:
        total = max(int(trainer.estimated_stepping_batches), 1)
        ramp = max(int(warmup * total), 1)
        if step < ramp:
            return (step + 1) / ramp
        return 0.5 * (1 + math.cos(math.pi * min(step - ramp, total - ramp) / max(total - ramp, 1)))

    return factor


def train_face_model(backbone: str, loss: str, images: torch.Tensor, labels: torch.Tensor, seed: int,
                     epochs: int = 6, batch_size: int = 64, lr: float = 0.1, embedding_size: int = 128,
                     progress: bool = True) -> FaceModel:
    """Train a small face model on uint8 images (B, 3, H, W) with identity labels; returns it in eval mode."""
    L.seed_everything(seed, workers=True, verbose=False)
    model = FaceModel(get_backbone(backbone, embedding_size), Preprocessing(embedding_size=embedding_size))
    task = FRTrainingTask(model, get_head(loss, embedding_size, int(labels.max()) + 1), lr=lr)
    quiet_lightning()
    batch_size = min(batch_size, len(images))
    loader = DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(seed))
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=progress, enable_model_summary=False, deterministic=False)
    trainer.fit(task, loader)
    return task.model.eval()


# ------------------------------------------------- the small models of the synthetic world, trained once
SMALL_ARCHS = {"small_resnet": "resnet", "small_mobilefacenet": "mobilefacenet"}
# fr_train settings that change how fast a model trains, not what it learns (kept out of cache keys)
RUNTIME_TRAIN_KEYS = ("workers",)


def _training_key(spec: dict, dataset, fr_train: dict) -> dict:
    key = {"backbone": SMALL_ARCHS[spec["arch"]], "loss": spec["loss"], "seed": spec.get("seed", 0),
           "embedding_size": spec.get("embedding_size", 128)}
    key.update(data=dataset.training_key(), train={k: v for k, v in fr_train.items() if k not in RUNTIME_TRAIN_KEYS},
               code=TRAINING_VERSION)
    return key


def trained_model_path(spec: dict, dataset, fr_train: dict, cache_dir: str | Path) -> Path:
    """Where the small model that ``spec`` describes is cached once trained on ``dataset``'s training pool."""
    if dataset is None or not hasattr(dataset, "training_pool"):
        raise ConfigError(f"model {spec['name']!r} has no checkpoint and the dataset has no training pool to "
                          f"train it on: give {spec['name']}.checkpoint=/path/to/weights.safetensors")
    return Path(cache_dir).expanduser() / "models" / f"{config_key(_training_key(spec, dataset, fr_train))}.safetensors"


def _train_to_cache(spec: dict, dataset, fr_train: dict, cache_dir: str | Path, threads: int | None = None,
                    progress: bool = True) -> Path:
    if threads:
        torch.set_num_threads(threads)
    path = trained_model_path(spec, dataset, fr_train, cache_dir)
    images, labels = dataset.training_pool()
    settings = {k: v for k, v in fr_train.items() if k not in RUNTIME_TRAIN_KEYS}
    trained = train_face_model(SMALL_ARCHS[spec["arch"]], spec["loss"], images, labels, int(spec.get("seed", 0)),
                               embedding_size=int(spec.get("embedding_size", 128)), progress=progress, **settings)
    key = _training_key(spec, dataset, fr_train)
    atomic_save(trained.backbone.state_dict(), path, {"config": json.dumps(key, sort_keys=True, default=str)})
    return path


def prepare_models(specs: list[dict], dataset, fr_train: dict, cache_dir: str | Path, log=None) -> None:
    """Train (once) every small model in ``specs`` that has no checkpoint and is not cached yet.

    Other zoo entries are skipped. With ``fr_train.workers > 1`` several models train at the same time in
    separate processes, each with an equal share of the CPU threads (on small CPU models this beats one
    model on all threads).
    """
    log = log or logging.getLogger("opom").info
    todo = [s for s in specs if s.get("arch") in SMALL_ARCHS and not s.get("checkpoint")
            and not trained_model_path(s, dataset, fr_train, cache_dir).exists()]
    if not todo:
        return
    dataset.training_pool()  # render and cache the pool once, before any worker reads it
    workers = max(1, min(int(fr_train.get("workers", 1)), len(todo)))
    names = ", ".join(f"{s['name']} ({s['arch']}, {s['loss']}, seed {s.get('seed', 0)})" for s in todo)
    log(f"training {len(todo)} face model(s) on the training pool - one time, then cached: {names}")
    if workers == 1:
        for s in todo:
            _train_to_cache(s, dataset, fr_train, cache_dir)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, torch.get_num_threads() // workers)
    n = len(todo)
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        for path in pool.map(_train_to_cache, todo, [dataset] * n, [fr_train] * n, [cache_dir] * n,
                             [threads] * n, [False] * n):
            log(f"trained and cached {path.name}")
