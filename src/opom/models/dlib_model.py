"""dlib's face_recognition_resnet_model_v1 as a black-box torch face model (no gradients): the project's tensor
convention over :class:`opom.models.dlib_native.DlibDescriptor` (dlib's own landmarks, chip and descriptor on the
aligned crops; L2 distance below 0.6 = same person). A different architecture, training set and alignment from the
torch models of this project, so it is a real black box for transfer tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from opom.models.dlib_native import DLIB_L2_THRESHOLD, DlibDescriptor


def to_uint8_hwc(images) -> np.ndarray:
    """(B, H, W, 3) uint8 RGB from numpy (B, H, W, 3) / (H, W, 3) uint8 or float in [0, 1], or torch
    (B, 3, H, W) / (3, H, W) uint8 or float in [0, 1]."""
    if isinstance(images, torch.Tensor):
        x = images.detach().cpu()
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"torch images must be (B, 3, H, W) RGB, got {tuple(x.shape)}")
        if x.dtype != torch.uint8:
            x = (x.float().clamp(0, 1) * 255).round().to(torch.uint8)
        return np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"numpy images must be (B, H, W, 3) RGB, got {x.shape}")
    if x.dtype != np.uint8:
        x = np.round(np.clip(x.astype(np.float64), 0, 1) * 255).astype(np.uint8)
    return np.ascontiguousarray(x)


class DlibFaceModel(DlibDescriptor, nn.Module):
    """dlib ResNet face descriptor on aligned RGB crops: a NON-differentiable black box returning (B, 128).

    Use :meth:`embed`; :meth:`forward` does the same but refuses inputs that require gradients. ``embed`` accepts
    numpy (B, H, W, 3) uint8 RGB or torch (B, 3, H, W) uint8 / float in [0, 1] (the project's convention).
    """

    differentiable = False

    def __init__(self, model_dir: str | Path | None = None, chip_size: int = 150, padding: float = 0.25,
                 num_jitters: int = 0):
        nn.Module.__init__(self)
        DlibDescriptor.__init__(self, model_dir, chip_size, padding, num_jitters)

    def face_chips(self, images) -> np.ndarray:
        """dlib's own alignment of each crop: (B, 150, 150, 3) uint8 RGB chips."""
        return self.uint8_chips(to_uint8_hwc(images))

    @torch.no_grad()
    def embed(self, images) -> torch.Tensor:
        """128-d dlib descriptors (B, 128), float32, on the input's device (CPU for numpy input)."""
        out = torch.tensor(self.descriptors(self.face_chips(images)), dtype=torch.float32)
        return out.to(images.device) if isinstance(images, torch.Tensor) else out

    def forward(self, images) -> torch.Tensor:
        if isinstance(images, torch.Tensor) and images.requires_grad and torch.is_grad_enabled():
            raise RuntimeError("DlibFaceModel is a black box: it has no gradients. Use it for evaluation only "
                               "(call .embed(x), or detach the input / wrap in torch.no_grad())")
        return self.embed(images)

    def extra_repr(self) -> str:
        return f"chip_size={self.chip_size}, padding={self.padding}, num_jitters={self.num_jitters}"

    @staticmethod
    def same_person(a: torch.Tensor, b: torch.Tensor, threshold: float = DLIB_L2_THRESHOLD) -> torch.Tensor:
        """dlib's verification rule: L2 distance of the descriptors below ``threshold``."""
        return (a - b).norm(dim=-1) < threshold
