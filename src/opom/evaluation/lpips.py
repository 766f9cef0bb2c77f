"""LPIPS (AlexNet) of protected against clean images — when the AlexNet weights are on this machine.

torchmetrics ships LPIPS' linear heads; the AlexNet backbone is torchvision's ImageNet weights, which are not
bundled and are never downloaded here. They are looked up in ``$OPOM_LPIPS_ALEXNET`` or torch's hub cache
(``~/.cache/torch/hub/checkpoints/alexnet-owt-7be5be79.pth``, where torchvision puts them) and loaded
weights-only (torchvision's own loader would unpickle them); without them LPIPS is simply not reported.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
# torchvision alexnet.features index -> the torchmetrics LPIPS slice that holds it
_SLICES = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}


def alexnet_weights() -> Path | None:
    candidates = [os.environ.get("OPOM_LPIPS_ALEXNET"), Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


def lpips_unavailable() -> str:
    """Why LPIPS is not reported (the AlexNet weights are absent), naming where to put them."""
    where = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE
    return (f"torchvision's AlexNet weights {ALEXNET_FILE} are not at {where} nor at $OPOM_LPIPS_ALEXNET "
            f"(never downloaded; copy them there to get LPIPS)")


@functools.lru_cache(maxsize=2)
def _model(path: str):
    from torchmetrics.functional.image.lpips import _NoTrainLpips

    net = _NoTrainLpips(net="alex", pnet_rand=True)  # backbone built empty, filled below
    state = torch.load(path, map_location="cpu", weights_only=True)
    features = {f"slice{_SLICES[int(k.split('.')[1])]}.{k.split('.', 1)[1]}": v
                for k, v in state.items() if k.startswith("features.")}
    net.net.load_state_dict(features, strict=True)
    return net.eval()


@torch.no_grad()
def lpips_distance(clean: torch.Tensor, protected: torch.Tensor, batch_size: int = 64) -> float | None:
    """Mean LPIPS of uint8 (B, 3, H, W) pairs; None when the AlexNet weights are not present."""
    path = alexnet_weights()
    if path is None:
        return None
    net = _model(str(path))
    total = 0.0
    for i in range(0, len(clean), batch_size):
        x, y = (t[i:i + batch_size].float() / 127.5 - 1.0 for t in (clean, protected))
        total += net(x, y).sum().item()
    return total / max(len(clean), 1)
