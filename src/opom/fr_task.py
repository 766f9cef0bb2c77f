"""The FR-training job: train a zoo architecture with a training head on a folder of aligned faces.

``python train_fr.py data.root=/data/casia_aligned arch=iresnet50 loss=arcface`` (see conf/train_fr.yaml and
the paper's recipes in conf/fr_recipe/). Lightning provides mixed precision (``trainer.precision``),
multi-GPU and multi-node strategies (``trainer.devices``, ``trainer.strategy``, ``trainer.num_nodes``) and
resumable checkpoints (``resume=<output_dir>/checkpoints/last.ckpt``). At the end the backbone is exported
as ``backbone.safetensors`` and ``backbone.pth`` (a plain state dict in the architecture's public key
layout), ready for ``surrogate.<name>.checkpoint=`` / ``blackbox``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from opom.cache import atomic_save
from opom.data.folder import FolderFaces
from opom.errors import ConfigError
from opom.logs import quiet_lightning
from opom.models.heads import get_head
from opom.models.training import FRTrainingTask
from opom.models.zoo import ZOO, FaceModel

log = logging.getLogger("opom")


def build_trainable(arch: str, embedding_size: int) -> FaceModel:
    """An untrained network of a zoo architecture behind its declared preprocessing."""
    entry = ZOO.get(arch)
    if entry is None or entry.make is None:
        trainable = sorted(name for name, e in ZOO.items() if e.make is not None)
        raise ConfigError(f"arch {arch!r} cannot be trained here; trainable architectures: {trainable}")
    preprocessing = dataclasses.replace(entry.preprocessing, embedding_size=embedding_size)
    return FaceModel(entry.make(embedding_size), preprocessing, name=arch)


def train_fr(cfg: DictConfig) -> dict[str, str]:
    quiet_lightning()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    out = Path(cfg.paths.output_dir)
    data = FolderFaces(cfg.data.root, cfg.data.image_size, cfg.data.flip)
    model = build_trainable(cfg.arch, cfg.embedding_size)
    head = get_head(cfg.loss, cfg.embedding_size, data.num_classes, **OmegaConf.to_container(cfg.head))
    task = FRTrainingTask(model, head, **OmegaConf.to_container(cfg.optim))
    loader = DataLoader(data, batch_size=min(cfg.batch_size, len(data)), shuffle=True, drop_last=True,
                        num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0,
                        pin_memory=torch.cuda.is_available())
    checkpoints = ModelCheckpoint(dirpath=out / "checkpoints", save_last=True, save_top_k=-1, every_n_epochs=1)
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer = L.Trainer(**cfg.trainer, max_epochs=cfg.epochs, callbacks=[checkpoints], logger=logger,
                        default_root_dir=str(out))
    log.info("training %s (%s) on %d images of %d identities -> %s", cfg.arch, cfg.loss, len(data),
             data.num_classes, out)
    trainer.fit(task, loader, ckpt_path=cfg.resume)
    exported = {}
    if trainer.is_global_zero:
        state = {k: v.detach().cpu() for k, v in task.model.backbone.state_dict().items()}
        meta = {"arch": cfg.arch, "loss": cfg.loss, "embedding_size": str(cfg.embedding_size),
                "identities": str(data.num_classes), "epochs": str(trainer.current_epoch)}
        atomic_save(state, out / "backbone.safetensors", meta)
        torch.save(state, out / "backbone.pth")
        exported = {"safetensors": str(out / "backbone.safetensors"), "pth": str(out / "backbone.pth")}
        log.info("exported %s", ", ".join(exported.values()))
    return exported
