"""A person's mask, loaded and checked against the alignment that ``protect`` uses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from opom.data.alignment import Template, get_template
from opom.errors import UserError
from opom.masks import MaskSet, load_masks

MATCH_KEY = "match"  # MaskSet.extra[MATCH_KEY] = {"model": zoo spec, "embedding": [...], "threshold": float}


class MaskMismatch(UserError):
    """A mask made for another alignment template or crop size than the one faces are aligned to."""


@dataclass
class PersonMask:
    """One person's mask as an (h, w, 3) float32 perturbation in grey levels, and where it applies."""

    identity: str
    delta: np.ndarray  # (h, w, 3) float32, grey levels (0..255 scale), |delta| <= eps
    eps: float
    template: Template
    template_name: str
    masks: MaskSet
    path: str = ""
    luminance: np.ndarray | None = None  # (h, w, 1) float32 grey levels: the mask for grey photos, if enrolled so

    @property
    def match(self) -> dict | None:
        """What ``--choose match`` needs (recognition model spec, mean embedding, threshold), if enrolled so."""
        info = self.masks.extra.get(MATCH_KEY)
        return info if isinstance(info, dict) and info.get("embedding") else None

    def describe(self) -> dict:
        ms = self.masks
        return {"path": self.path, "identity": self.identity, "eps": ms.eps, "surrogate": ms.surrogate,
                "method": ms.method, "attack": ms.attack, "template": ms.template, "version": ms.version}


def check_template(ms: MaskSet, template_name: str, where: str = "the mask") -> Template:
    """The template faces are aligned to, after checking that the mask was made for it (name, points, size)."""
    template = get_template(template_name)
    h, w = int(ms.masks.shape[-2]), int(ms.masks.shape[-1])
    fix = f"use the matching template (--template {ms.template}) or enroll again for {template_name!r}"
    if ms.template != template_name:
        raise MaskMismatch(f"{where} was made for alignment template {ms.template!r} ({w}x{h}), but faces are "
                           f"aligned to {template_name!r} ({template.width}x{template.height}): {fix}")
    if (w, h) != template.size or int(ms.image_size) not in template.size:
        raise MaskMismatch(f"{where} is {w}x{h} (image_size {ms.image_size}), but template {template_name!r} "
                           f"aligns faces to {template.width}x{template.height}: {fix}")
    points = np.asarray(ms.template_points, dtype=np.float64)
    if points.shape != template.array().shape or not np.allclose(points, template.array(), atol=1e-3):
        raise MaskMismatch(f"{where} was made with other landmark positions than template {template_name!r} "
                           f"(same name, different points): {fix}")
    return template


def load_person_mask(path: str | Path, identity: str | None = None, template: str | None = None) -> PersonMask:
    """Load a mask file and pick one person's mask (``identity``, or the only one in the file). Faces are aligned to
    the mask's own template (its canvas) unless ``template`` names one, which must then be the mask's."""
    from opom.data.inputs import check_input_file

    path = check_input_file(path, "mask file", f"give the .safetensors file that `opom enroll PHOTOS... --out "
                                               f"{Path(path).name}` wrote")
    try:
        ms = load_masks(path, framework="numpy")  # numpy: protect starts without torch
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - safetensors raises several types on a foreign/corrupt file
        raise UserError(f"{str(path)!r} is not a readable opom mask file ({type(err).__name__}: {err}); make one "
                        "with `opom enroll`") from err
    template = template or ms.template
    tpl = check_template(ms, template, where=f"mask file {str(path)!r}")
    if identity is None:
        if len(ms.identities) != 1:
            listed = ", ".join(ms.identities[:5]) + (" ..." if len(ms.identities) > 5 else "")
            raise UserError(f"mask file {str(path)!r} holds {len(ms.identities)} people ({listed}); choose one "
                            "with --identity NAME")
        identity = ms.identities[0]
    elif identity not in ms.identities:
        raise UserError(f"mask file {str(path)!r} has no mask for {identity!r}; it has: "
                        f"{', '.join(ms.identities[:10])}")
    index = ms.identities.index(identity)
    delta = np.asarray(ms.masks[index], np.float32).transpose(1, 2, 0) * 255.0
    luminance = None
    if ms.luminance is not None:
        luminance = np.ascontiguousarray(np.asarray(ms.luminance[index], np.float32).transpose(1, 2, 0) * 255.0)
    for name, value in (("mask", delta), ("luminance mask", luminance)):
        bound = float(np.abs(value).max()) if value is not None and value.size else 0.0
        if bound > ms.eps + 1e-3:
            raise UserError(f"mask file {str(path)!r} is inconsistent: its {name} reaches {bound:.2f} grey levels "
                            f"but declares eps {ms.eps}; enroll again")
    return PersonMask(identity, np.ascontiguousarray(delta, dtype=np.float32), float(ms.eps), tpl, template, ms,
                      str(path), luminance)
