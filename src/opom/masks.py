"""Self-describing mask files: safetensors (no pickle) with the metadata needed to use them later."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import safe_open

from opom import __version__
from opom.errors import UserError

if TYPE_CHECKING:  # torch is imported where it is used: reading a mask file (opom protect) does not need it
    import torch

FORMAT = "opom-masks/1"
# insightface's 5-point template (eyes, nose tip, mouth corners) for 112x112 aligned faces
ARCFACE_TEMPLATE_112 = ((38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366), (41.5493, 92.3655),
                        (70.7299, 92.2041))


@dataclass
class MaskSet:
    """Masks (I, 3, H, W) in [0, 1] image units (|m| <= eps / 255) and what they were made with."""

    masks: torch.Tensor
    identities: list[str]
    surrogate: str
    method: str
    attack: str
    eps: float  # grey levels (0..255)
    image_size: int = 112
    template: str = "arcface_112"
    template_points: tuple = ARCFACE_TEMPLATE_112
    version: str = __version__
    extra: dict = field(default_factory=dict)
    # optional (I, 1, H, W) masks for grey photos (|m| <= eps / 255): crafted on the luminance of the faces
    luminance: torch.Tensor | None = None

    def __post_init__(self):
        if self.masks.ndim != 4 or self.masks.shape[0] != len(self.identities):
            raise UserError(f"masks of shape {tuple(self.masks.shape)} do not match {len(self.identities)} identities")
        if self.luminance is not None and tuple(self.luminance.shape) != (self.masks.shape[0], 1,
                                                                         *self.masks.shape[2:]):
            raise UserError(f"luminance masks of shape {tuple(self.luminance.shape)} do not match the masks "
                            f"{tuple(self.masks.shape)}")

    def mask_for(self, identity: str) -> torch.Tensor:
        if identity not in self.identities:
            raise KeyError(f"no mask for {identity!r}; this file has masks for {len(self.identities)} identities")
        return self.masks[self.identities.index(identity)]


def mask_metadata(ms: MaskSet) -> dict[str, str]:
    """What a mask file says about its masks (safetensors metadata: strings only)."""
    return {"format": FORMAT, "identities": json.dumps(ms.identities), "surrogate": ms.surrogate, "method": ms.method,
            "attack": ms.attack, "eps": repr(float(ms.eps)), "image_size": str(ms.image_size), "template": ms.template,
            "template_points": json.dumps([list(p) for p in ms.template_points]), "version": ms.version,
            "extra": json.dumps(ms.extra, default=str)}


def save_masks(path: str | Path, ms: MaskSet) -> Path:
    from opom.cache import atomic_save

    tensors = {"masks": ms.masks.detach().float().cpu()}
    if ms.luminance is not None:
        tensors["luminance"] = ms.luminance.detach().float().cpu()
    atomic_save(tensors, Path(path), mask_metadata(ms))
    return Path(path)


def load_masks(path: str | Path, framework: str = "pt", lazy: bool = False) -> MaskSet:
    """Read a mask file; ``framework="numpy"`` gives numpy arrays (and does not import torch); ``lazy``: its metadata
    only, the masks as an empty torch tensor of their shape on the meta device (for files too large to read at once)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"mask file {str(path)!r} does not exist")
    with safe_open(path, framework=framework) as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise UserError(f"{str(path)!r} is not an opom mask file "
                            f"(format {meta.get('format')!r}, expected {FORMAT!r})")
        if lazy:
            import torch

            masks, luminance = torch.empty(f.get_slice("masks").get_shape(), device="meta"), None
        else:
            masks = f.get_tensor("masks")
            luminance = f.get_tensor("luminance") if "luminance" in f.keys() else None
    return MaskSet(masks=masks, luminance=luminance, identities=json.loads(meta["identities"]),
                   surrogate=meta["surrogate"], method=meta["method"], attack=meta["attack"], eps=float(meta["eps"]),
                   image_size=int(meta["image_size"]), template=meta["template"],
                   template_points=tuple(tuple(p) for p in json.loads(meta["template_points"])),
                   version=meta["version"], extra=json.loads(meta.get("extra", "{}")))


def save_preview(path: str | Path, masks: torch.Tensor, eps: float, max_items: int = 16) -> Path:
    """A PNG grid of the first ``max_items`` masks, mid-grey = 0, stretched so +-eps fills the range."""
    from torchvision.utils import save_image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shown = (masks[:max_items].detach().float().cpu() / (2 * eps / 255.0) + 0.5).clamp(0, 1)
    tmp = path.with_name(f".{path.name}.tmp.png")
    save_image(shown, tmp, nrow=min(8, len(shown)), padding=2, pad_value=1.0)
    tmp.replace(path)
    return path
