"""``check``: "am I protected?" — clean and protected photos against a local panel of face-recognition models.

Every photo's largest face is detected (YuNet by default), aligned to the canonical 112x112 template and embedded by
each panel model. A protected photo is compared with the clean reference photos (the enrolment photos, or the clean
originals), leaving out its own clean original when that is known and other references remain — a recogniser
matches a new photo against photos it already has. The best score over the references decides, at the model's
own threshold (SFace: cosine >= 0.363; dlib: L2 distance < 0.6): "NOT protected" if the model still verifies the
person, "protected" otherwise. For comparison, the clean original of each protected photo (when known) is scored
the same way. Nothing leaves the machine; the panel is local (default: sface, and dlib when installed). The photos
are read and their faces found before the panel's models are loaded, each model once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from opom.cloak.faces import DetectSettings, detect_faces, embed_crops
from opom.cloak.report import read_report
from opom.data.alignment import warp_to_template
from opom.data.inputs import walk
from opom.data.photos import PhotoError, read_photo
from opom.errors import UserError

DEFAULT_PANEL = ("sface", "dlib")
# faces are aligned onto this canvas: the 112 crop plus 56 px of the photo around it, so models that look beyond the
# ArcFace crop (dlib's chip, HSE's box) see the photo, as in their own pipelines; each model reads its own crop
CHECK_CANVAS = "canvas224"


@dataclass
class PanelModel:
    """A recognition model with its own verification rule."""

    name: str
    model: object
    metric: str  # "cosine" (same if >= threshold) or "l2" (same if < threshold)
    threshold: float

    def embed(self, crops: list[np.ndarray]) -> np.ndarray:
        e = embed_crops(self.model, crops)
        if self.metric == "cosine":
            e /= np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        return e

    def scores(self, a: np.ndarray, refs: np.ndarray) -> np.ndarray:
        return refs @ a if self.metric == "cosine" else np.linalg.norm(refs - a, axis=1)

    def best(self, scores: np.ndarray) -> float:
        return float(scores.max() if self.metric == "cosine" else scores.min())

    def same(self, score: float) -> bool:
        return score >= self.threshold if self.metric == "cosine" else score < self.threshold

    @property
    def rule(self) -> str:
        return f"cos >= {self.threshold:.3f}" if self.metric == "cosine" else f"L2 < {self.threshold:.3f}"


def validate_panel(names, weights: dict[str, str] | None = None) -> None:
    """Fail early (before any photo is read) on unknown models and missing or misplaced weights, with the fix in
    the command line's own syntax (``--weights NAME=PATH``)."""
    from opom.data.inputs import check_input_file

    weights = dict(weights or {})
    for name, path in weights.items():
        if name not in names:
            raise UserError(f"--weights {name}=...: {name!r} is not in the panel ({', '.join(names)}); add it with "
                            f"--panel {','.join([*names, name])}")
        check_input_file(path, f"weights of panel model {name!r}", f"give the weights file: --weights {name}=PATH")
    others = [n for n in names if n not in ("sface", "dlib") or weights.get(n)]
    if not others:
        return
    from opom.models.zoo import ZOO  # imports torch: only for models other than the bundled SFace and dlib

    for name in others:
        if name not in ZOO:
            raise UserError(f"unknown panel model {name!r}; the zoo has {', '.join(sorted(ZOO))}")
        if ZOO[name].needs_checkpoint and not weights.get(name):
            raise UserError(f"panel model {name!r} needs weights: give them with --weights {name}=PATH "
                            f"({ZOO[name].weights})")


def build_panel(names=DEFAULT_PANEL, weights: dict[str, str] | None = None,
                thresholds: dict[str, float] | None = None, notes: list[str] | None = None,
                canvas: str = CHECK_CANVAS) -> list[PanelModel]:
    """Zoo models by arch name; a model whose extra is not installed is skipped (noted) unless it is the only one.

    The bundled SFace (no ``weights``) runs through OpenCV and dlib through dlib itself, both without torch
    (:class:`~opom.cloak.faces.SFaceRunner`, :class:`~opom.models.dlib_native.DlibDescriptor`): the default panel
    starts in about a second.
    """
    from opom.cloak.faces import SFaceRunner
    from opom.data.alignment import CANVASES
    from opom.models.extras import MissingExtraError
    from opom.models.npm_assets import AssetError

    weights, thresholds = dict(weights or {}), dict(thresholds or {})
    validate_panel(names, weights)
    panel, missing = [], []
    for name in names:
        if name == "sface" and not weights.get(name):
            try:
                panel.append(PanelModel(name, SFaceRunner(CANVASES[canvas]), "cosine",
                                        float(thresholds.get(name, 0.363))))
            except MissingExtraError as err:
                missing.append(f"{name} skipped: {err}")
            continue
        if name == "dlib" and not weights.get(name):
            from opom.models.dlib_native import DLIB_L2_THRESHOLD, DlibDescriptor

            try:
                runner = DlibDescriptor()
            except (MissingExtraError, ImportError) as err:
                missing.append(f"{name} skipped: {err}")
                continue
            runner.set_canvas(CANVASES[canvas])
            panel.append(PanelModel(name, runner, "l2", float(thresholds.get(name, DLIB_L2_THRESHOLD))))
            continue
        from opom.models.zoo import build_face_model

        try:
            model = build_face_model({"name": name, "arch": name, "checkpoint": weights.get(name)},
                                     canvas=CANVASES[canvas])
        except (MissingExtraError, AssetError) as err:
            missing.append(f"{name} skipped: {err}")
            continue
        rule = model.preprocessing.rule  # each model's own rule: cosine, or L2 distance of raw descriptors (dlib)
        threshold = thresholds.get(name, model.preprocessing.threshold)
        if threshold is None:
            raise UserError(f"panel model {name!r} has no known verification threshold: give one with "
                            f"--threshold {name}=VALUE ({'cosine similarity' if rule == 'cosine' else 'L2 distance'})")
        panel.append(PanelModel(name, model, rule, float(threshold)))
    if not panel:
        raise UserError("no panel model could be built: " + "; ".join(missing))
    if notes is not None:
        notes.extend(missing)
    return panel


def face_crop(path: Path, detector, settings: DetectSettings = DetectSettings(),
              canvas: str = CHECK_CANVAS) -> np.ndarray | None:
    """The largest face of a photo aligned onto ``canvas`` (None if there is none); an already aligned 112x112
    crop is placed at the canvas centre (nothing around it). Raises PhotoError."""
    from opom.data.alignment import CANVASES

    rgb, _ = read_photo(path, policy=True)
    if rgb.shape[:2] == (112, 112):
        c = CANVASES[canvas]
        if c.scale != 1:
            raise UserError(f"an aligned 112x112 crop cannot fill canvas {canvas!r}: give the original photo")
        return np.pad(rgb, ((c.margin, c.margin), (c.margin, c.margin), (0, 0)))
    faces = detect_faces(rgb, detector, settings)
    if not faces:
        return None
    face = max(faces, key=lambda f: f.area)
    return warp_to_template(rgb, face.landmarks, canvas)[0]


@dataclass
class CheckResult:
    """Per model and protected photo: the scores and verdicts; per model: the protection rate."""

    references: list[str]
    rows: list[dict] = field(default_factory=list)  # model, photo, clean_score, protected_score, protected
    rates: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"references": self.references, "rows": self.rows, "rates": self.rates, "notes": self.notes}

    def table(self) -> str:
        lines = [f"check: {len({r['photo'] for r in self.rows})} protected photo(s) against "
                 f"{len(self.references)} clean reference photo(s)"]
        head = f"  {'model':<8} {'rule':<13} {'photo':<28} {'clean':>7} {'protected':>9}  verdict"
        lines.append(head)
        for r in self.rows:
            clean = f"{r['clean_score']:.3f}" if r.get("clean_score") is not None else "-"
            prot = f"{r['protected_score']:.3f}" if r.get("protected_score") is not None else "-"
            verdict = r["verdict"]
            lines.append(f"  {r['model']:<8} {r['rule']:<13} {Path(r['photo']).name[:28]:<28} {clean:>7} {prot:>9}  "
                         f"{verdict}")
        for name, rate in self.rates.items():
            clean = (f"; clean originals recognised {rate['clean_recognised']}/{rate['clean_total']}"
                     if rate.get("clean_total") else "")
            lines.append(f"  {name}: protected {rate['protected']}/{rate['total']} "
                         f"({100 * rate['rate']:.0f}%){clean}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def pairs_from_report(report: str | Path) -> list[tuple[Path | None, Path]]:
    """``(clean original, protected copy)`` of every protected file of a ``protect`` report (photos only)."""
    entries = [e for e in read_report(report) if e.get("outcome") == "protected" and e.get("kind") == "photo"]
    latest = {e["output"]: e for e in entries}
    return [(Path(e["source"]), Path(e["output"])) for e in latest.values()]


def check(references: list[str | Path], protected: list[str | Path] | None = None,
          originals: list[str | Path | None] | None = None, report: str | Path | None = None,
          panel: list[PanelModel] | None = None, panel_names=DEFAULT_PANEL, detector=None,
          settings: DetectSettings = DetectSettings(), quiet: bool = False, weights: dict[str, str] | None = None,
          thresholds: dict[str, float] | None = None) -> CheckResult:
    """Score protected photos against clean reference photos with each panel model.

    ``references``: clean photos of the person (files or folders). ``protected``: protected photos, with their
    clean ``originals`` in the same order where known (None otherwise); or ``report``: a ``protect`` report whose
    protected photos (and their sources) are used. With no ``references``, the report's sources are the references.
    ``panel``: ready models, else :func:`build_panel` of ``panel_names`` (with ``weights`` and ``thresholds``), built
    after the photos are read.
    """
    notes: list[str] = []
    pairs: list[tuple[Path | None, Path]] = []
    if report is not None:
        pairs += pairs_from_report(report)
    if protected:
        originals = list(originals) if originals is not None else [None] * len(protected)
        if len(originals) != len(protected):
            raise UserError(f"{len(protected)} protected photos but {len(originals)} originals")
        pairs += [(Path(o) if o else None, Path(p)) for o, p in zip(originals, protected, strict=True)]
    if not pairs:
        raise UserError("nothing to check: give protected photos (--protected) or a protect report (--report)")
    if panel is None:
        validate_panel(panel_names, weights)
    if references:
        found, skipped = walk(list(references), command="check")
        ref_files = [f.path for f in found]
        notes += [f"{s.path}: {s.reason}" for s in skipped]
    else:
        ref_files = sorted({o for o, _ in pairs if o})
    if not ref_files:
        raise UserError("no clean reference photos: give the clean (enrolment) photos of the person")
    if detector is None:
        detector = settings.build()

    def crops_of(paths):
        crops = {}
        for p in paths:
            try:
                crop = face_crop(Path(p), detector, settings)
            except PhotoError as err:
                notes.append(f"{p}: {err.reason}")
                continue
            if crop is None:
                notes.append(f"{p}: no face found")
                continue
            crops[Path(p).resolve()] = crop
        return crops

    refs = crops_of(ref_files)
    if not refs:
        raise UserError("no face found in any clean reference photo")
    prot = crops_of([p for _, p in pairs])
    orig = crops_of(sorted({o for o, _ in pairs if o is not None and o.resolve() not in refs}))
    orig |= refs
    if panel is None:
        built: list[str] = []
        panel = build_panel(panel_names, weights=weights, thresholds=thresholds, notes=built)
        notes[:0] = built
    result = CheckResult([str(p) for p in refs], notes=notes)
    ref_keys = list(refs)
    for m in panel:
        ref_emb = dict(zip(ref_keys, m.embed([refs[k] for k in ref_keys]), strict=True))
        done = recognised = clean_total = clean_recognised = 0
        for original, path in pairs:
            key = path.resolve()
            if key not in prot:
                continue
            okey = original.resolve() if original is not None else None
            others = [k for k in ref_keys if k != okey] or ref_keys
            refs_m = np.stack([ref_emb[k] for k in others])
            score = m.best(m.scores(m.embed([prot[key]])[0], refs_m))
            clean_score = None
            if okey is not None and okey in orig:
                clean_score = m.best(m.scores(m.embed([orig[okey]])[0], refs_m))
                clean_total += 1
                clean_recognised += m.same(clean_score)
            same = m.same(score)
            done += 1
            recognised += same
            result.rows.append({"model": m.name, "rule": m.rule, "photo": str(path),
                                "original": str(original) if original else None, "references": len(others),
                                "clean_score": None if clean_score is None else round(clean_score, 4),
                                "protected_score": round(score, 4), "protected": not same,
                                "verdict": "NOT protected" if same else "protected"})
        result.rates[m.name] = {"protected": done - recognised, "total": done,
                                "rate": (done - recognised) / done if done else 0.0, "threshold": m.threshold,
                                "metric": m.metric, "clean_recognised": clean_recognised, "clean_total": clean_total}
    if not quiet:
        print(result.table())
    return result


def save_result(result: CheckResult, path: str | Path) -> Path:
    from opom.cloak.photofile import atomic_write

    path = Path(path)
    atomic_write(path, json.dumps(result.to_dict(), indent=2).encode())
    return path
