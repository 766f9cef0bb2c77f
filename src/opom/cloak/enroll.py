"""``enroll``: photos of one person -> that person's mask file.

The photos are read upright in sRGB (:func:`opom.data.photos.read_photo`); in each, the largest face is found
with the framework's MTCNN detector and aligned to the canonical 112x112 template (photos that already are
112x112 aligned crops are taken as they are). The framework then crafts the mask: a
:class:`~opom.module.MaskCrafter` in a Lightning ``Trainer`` (progress bar), with the chosen surrogate, method
(default the convex hull) and attack (default FIM, eps 8 grey levels, 16 iterations, as ``conf/attack/fim.yaml``).

The mask file (:func:`opom.masks.save_masks`) also carries, in ``extra``:
- ``match``: the surrogate's spec, the person's mean L2-normalised embedding of the enrolment photos and the
  model's verification threshold, for ``protect --choose match``. This embedding identifies the person: keep the
  mask file as private as the photos.
- ``enroll``: how many photos were used, their names, and the white-box check (the surrogate's cosine similarity
  of each masked enrolment face to the clean mean embedding, before and after).
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from opom.attack import ATTACKS
from opom.cloak.faces import DetectSettings, detect_faces
from opom.data.alignment import get_template, warp_to_template
from opom.data.photos import PhotoError, read_photo
from opom.errors import UserError
from opom.masks import MaskSet, save_masks, save_preview
from opom.methods import METHODS

TEMPLATE = "arcface_112"  # zoo models take canonical 112x112 crops
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".tif", ".tiff", ".bmp", ".mpo")


@dataclass
class EnrollSettings:
    """What the mask is crafted with. ``attack_options`` / ``method_options`` go to their constructors."""

    surrogate: str = "sface"  # a zoo arch (differentiable)
    weights: str | None = None  # the surrogate's checkpoint, when its arch needs one
    method: str = "convex_hull"
    attack: str = "fim"
    eps: float = 8.0  # grey levels
    iterations: int | None = None  # None: the attack's default (FIM 16, DFANet-MI 100)
    method_options: dict = field(default_factory=dict)
    attack_options: dict = field(default_factory=dict)
    detect: DetectSettings = field(default_factory=DetectSettings)

    def validate(self) -> EnrollSettings:
        if self.method not in METHODS:
            raise UserError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.attack not in ATTACKS:
            raise UserError(f"unknown attack {self.attack!r}; choose one of {', '.join(ATTACKS)}")
        if not self.eps > 0:
            raise UserError(f"eps must be > 0 grey levels (e.g. 8), got {self.eps}")
        if self.iterations is not None and self.iterations < 1:
            raise UserError(f"iterations must be >= 1, got {self.iterations}")
        self.detect.validate()
        return self


@dataclass
class EnrollResult:
    path: Path
    preview: Path | None
    masks: MaskSet
    used: list[str]
    skipped: dict[str, str]  # file -> why
    whitebox: dict

    def summary(self) -> str:
        wb = self.whitebox
        lines = [f"enroll: mask for {self.masks.identities[0]!r} from {len(self.used)} photo(s) -> {self.path}",
                 f"  {self.masks.method}, {self.masks.attack}, eps {self.masks.eps:g}, "
                 f"surrogate {self.masks.surrogate}"]
        if wb:
            lines.append(f"  white-box check ({self.masks.surrogate}): similarity to your enrolment embedding "
                         f"{wb['clean_mean']:.3f} clean -> {wb['protected_mean']:.3f} masked"
                         + (f" (threshold {wb['threshold']:.3f})" if wb.get("threshold") is not None else ""))
        if self.preview:
            lines.append(f"  preview: {self.preview}")
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)


def collect_photos(inputs: list[str | Path]) -> list[Path]:
    """Files as given, and the photos (by suffix, not hidden) of folders, recursively, sorted."""
    files: list[Path] = []
    for raw in inputs:
        path = Path(raw).expanduser()
        if not path.exists():
            raise UserError(f"input {str(path)!r} does not exist")
        if path.is_file():
            files.append(path)
            continue
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            files += [Path(dirpath) / n for n in sorted(filenames)
                      if not n.startswith(".") and Path(n).suffix.lower() in PHOTO_SUFFIXES]
    return files


def aligned_faces(files: list[Path], detector=None, settings: DetectSettings = DetectSettings(),
                  template: str = TEMPLATE) -> tuple[list[np.ndarray], list[str], dict[str, str]]:
    """The largest face of each photo, aligned: ``(crops, used file names, skipped {file: why})``.

    A photo of exactly the template size is taken as an aligned crop already.
    """
    tpl = get_template(template)
    crops, used, skipped = [], [], {}
    for path in files:
        try:
            rgb, _ = read_photo(path)
        except PhotoError as err:
            skipped[str(path)] = err.reason
            continue
        if (rgb.shape[1], rgb.shape[0]) == tpl.size:
            crops.append(rgb)
            used.append(str(path))
            continue
        if detector is None:
            from opom.data.prepare import default_detector

            detector = default_detector()
        faces = detect_faces(rgb, detector, settings)
        if not faces:
            skipped[str(path)] = "no face found"
            continue
        face = max(faces, key=lambda f: f.area)
        crops.append(warp_to_template(rgb, face.landmarks, tpl)[0])
        used.append(str(path))
    return crops, used, skipped


def build_surrogate(settings: EnrollSettings):
    """The zoo model named by ``settings.surrogate`` (with ``weights``); refuses black boxes."""
    from opom.models.zoo import build_face_model

    spec = {"name": settings.surrogate, "arch": settings.surrogate, "checkpoint": settings.weights}
    model = build_face_model(spec)
    if not getattr(model, "differentiable", True):
        raise UserError(f"{settings.surrogate!r} is a black box (no gradients) and cannot craft a mask; use a "
                        "differentiable surrogate such as sface")
    return model, spec


def craft_mask(crops: torch.Tensor, surrogate: torch.nn.Module, settings: EnrollSettings, progress: bool = True
               ) -> torch.Tensor:
    """One mask (3, H, W) in [0, 1] units for the aligned crops (N, 3, H, W) uint8 of one person."""
    import lightning as L
    from torch.utils.data import DataLoader

    from opom.data.protection import IdentityChunks
    from opom.logs import quiet_lightning
    from opom.module import MaskCrafter

    method = METHODS[settings.method](**settings.method_options)
    kwargs = dict(settings.attack_options) | {"eps": float(settings.eps)}
    if settings.iterations is not None:
        kwargs["iterations"] = int(settings.iterations)
    attack = ATTACKS[settings.attack](**kwargs)
    quiet_lightning()
    module = MaskCrafter(surrogate, method, attack, num_identities=1, image_size=int(crops.shape[-1]))
    iterations = attack.iterations if method.crafts else 1
    loader = DataLoader(IdentityChunks(crops[None], 1, iterations), batch_size=None, shuffle=False)
    trainer = L.Trainer(accelerator="auto", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=progress, log_every_n_steps=1)
    with warnings.catch_warnings():  # the attack is the optimiser: no Lightning optimizer, by design
        warnings.filterwarnings("ignore", message=".*configure_optimizers.*returned `None`.*")
        trainer.fit(module, train_dataloaders=loader)
    return module.masks.detach().cpu()[0]


@torch.no_grad()
def embed(model: torch.nn.Module, crops: torch.Tensor) -> torch.Tensor:
    """L2-normalised embeddings (N, D) of uint8 crops (N, 3, H, W)."""
    device = next(model.parameters(), torch.zeros(0)).device
    return F.normalize(model(crops.to(device).float() / 255.0).float().cpu(), dim=1)


def whitebox_check(model, crops: torch.Tensor, mask: torch.Tensor, threshold: float | None) -> dict:
    """The surrogate's cosine similarity of clean and masked enrolment faces to the clean mean embedding.

    Masked faces are ``uint8(clip(x + mask))`` as the framework's evaluation applies masks.
    """
    clean = embed(model, crops)
    centre = F.normalize(clean.mean(0), dim=0)
    masked = (crops.float() + mask[None] * 255.0).clamp(0, 255).to(torch.uint8)
    prot = embed(model, masked)
    return {"clean_mean": round(float((clean @ centre).mean()), 4),
            "protected_mean": round(float((prot @ centre).mean()), 4),
            "protected_per_photo": [round(float(v), 4) for v in prot @ centre],
            "threshold": threshold}


def enroll(inputs: list[str | Path] | str | Path, out: str | Path, name: str | None = None,
           settings: EnrollSettings | None = None, surrogate=None, threshold: float | None = None,
           detector=None, overwrite: bool = False, preview: bool = True, progress: bool = True,
           quiet: bool = False) -> EnrollResult:
    """Craft the mask of the person in ``inputs`` (photos or folders) and save it to ``out`` (safetensors).

    ``surrogate``: a ready model (RGB [0, 1] aligned crops -> embeddings) instead of building
    ``settings.surrogate`` from the zoo; ``threshold`` is then its cosine verification threshold (for ``match``).
    """
    settings = (settings or EnrollSettings()).validate()
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    out = Path(out).expanduser()
    if out.suffix != ".safetensors":
        raise UserError(f"the mask file must end in .safetensors, got {str(out)!r}")
    if out.exists() and not overwrite:
        raise UserError(f"{str(out)!r} exists; choose another --out or pass --overwrite to replace it")
    files = collect_photos(list(inputs))
    if not files:
        raise UserError(f"no photos in {', '.join(map(str, inputs))}")
    if name is None:
        first = Path(inputs[0]).expanduser().resolve()
        name = first.name if first.is_dir() else out.name.split(".")[0]
    start = time.perf_counter()
    crops, used, skipped = aligned_faces(files, detector, settings.detect)
    if not crops:
        why = "; ".join(f"{Path(k).name}: {v}" for k, v in list(skipped.items())[:5])
        raise UserError(f"no usable face in the {len(files)} photo(s) given ({why}); use clear, front-facing "
                        "photos of the person")
    spec = None
    if surrogate is None:
        surrogate, spec = build_surrogate(settings)
        threshold = surrogate.preprocessing.threshold
    images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()
    mask = craft_mask(images, surrogate, settings, progress)
    check = whitebox_check(surrogate, images, mask, threshold)
    clean = embed(surrogate, images)
    extra = {"enroll": {"photos": len(used), "sources": [Path(u).name for u in used],
                        "skipped": {Path(k).name: v for k, v in skipped.items()}, "whitebox": check,
                        "iterations": settings.iterations, "time_s": round(time.perf_counter() - start, 2)}}
    if spec is not None and threshold is not None:
        extra["match"] = {"model": spec, "threshold": float(threshold),
                          "embedding": [round(float(v), 6) for v in F.normalize(clean.mean(0), dim=0)]}
    tpl = get_template(TEMPLATE)
    ms = MaskSet(masks=mask[None].contiguous(), identities=[name], surrogate=settings.surrogate,
                 method=settings.method, attack=settings.attack, eps=float(settings.eps), image_size=tpl.width,
                 template=TEMPLATE, template_points=tpl.points, extra=extra)
    save_masks(out, ms)
    preview_path = None
    if preview:
        preview_path = save_preview(out.with_name(out.name.removesuffix(".safetensors") + "_preview.png"),
                                    ms.masks, ms.eps)
    result = EnrollResult(out, preview_path, ms, used, skipped, check)
    if len(used) < 3 and not quiet:
        print(f"note: only {len(used)} photo(s) of {name!r}; 3-10 varied photos make a mask that carries over "
              "better to new photos")
    if not quiet:
        print(result.summary())
    return result
