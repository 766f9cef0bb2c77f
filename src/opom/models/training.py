"""Face-recognition training: a backbone plus a margin head, as a Lightning task.

Used to train the small models of the synthetic world (cached by their config, see
:mod:`opom.models.zoo`); the same task trains any registered backbone on any labelled image tensor.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from opom.logs import quiet_lightning
from opom.models.backbones import get_backbone
from opom.models.heads import get_head
from opom.models.zoo import FaceModel


class FRTrainingTask(L.LightningModule):
    """Classification training of a :class:`FaceModel` with a softmax or combined-margin head."""

    def __init__(self, backbone: str, loss: str, num_classes: int, embedding_size: int = 128,
                 lr: float = 0.1, weight_decay: float = 5e-4, epochs: int = 6):
        super().__init__()
        self.save_hyperparameters()
        self.model = FaceModel(get_backbone(backbone, embedding_size))
        self.head = get_head(loss, embedding_size, num_classes)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        logits = self.head(self.model(images.float() / 255), labels)
        loss = F.cross_entropy(logits, labels)
        self.log("fr/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9,
                              weight_decay=self.hparams.weight_decay, nesterov=True)
        steps = self.trainer.estimated_stepping_batches
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.hparams.lr, total_steps=steps, pct_start=0.15)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def train_face_model(backbone: str, loss: str, images: torch.Tensor, labels: torch.Tensor, seed: int,
                     epochs: int = 6, batch_size: int = 64, lr: float = 0.1, embedding_size: int = 128,
                     progress: bool = True) -> FaceModel:
    """Train a face model on uint8 images (B, 3, H, W) with integer identity labels; returns it in eval mode."""
    L.seed_everything(seed, workers=True, verbose=False)
    task = FRTrainingTask(backbone, loss, int(labels.max()) + 1, embedding_size, lr=lr, epochs=epochs)
    quiet_lightning()
    batch_size = min(batch_size, len(images))
    loader = DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(seed))
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=progress, enable_model_summary=False, deterministic=False)
    trainer.fit(task, loader)
    return task.model.eval()
