"""Transfer evaluation of masks against face models (identification with distractors)."""

from __future__ import annotations

import torch
from torch import nn

from opom.data.protection import ProtectionSet
from opom.evaluation.metrics import apply_mask_uint8, protection_rates


@torch.no_grad()
def embed(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Embeddings (B, D) of uint8 images (B, 3, H, W), in batches."""
    device = next(model.parameters(), torch.empty(0)).device
    out = [model(images[i:i + batch_size].to(device).float() / 255.0).float().cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out)


def evaluate_model(model: nn.Module, data: ProtectionSet, masks: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10),
                   batch_size: int = 256) -> dict[str, float]:
    """Clean top-k accuracy and PSR@k of ``masks`` (I, 3, H, W) on ``data``'s test images for one model."""
    was_training = model.training
    model.eval()
    test = data.test_images
    n_id, t = test.shape[:2]
    flat = test.flatten(0, 1)
    protected = apply_mask_uint8(test, masks.detach().cpu()[:, None]).flatten(0, 1)
    clean_e = embed(model, flat, batch_size).view(n_id, t, -1)
    prot_e = embed(model, protected, batch_size).view(n_id, t, -1)
    dist_e = embed(model, data.distractors, batch_size)
    model.train(was_training)
    return protection_rates(clean_e, prot_e, dist_e, ks)
