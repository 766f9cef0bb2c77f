"""The held-out-photo protocol: does a person's mask protect a photo it never saw, against each model's own rule?

For every fold of a :class:`~opom.data.real_photos.HoldoutSet` (a person, the photos they enrolled with, and one
more photo of them the mask never saw) the fold's mask is added to the held-out photo as the reference does
(``uint8(clip(x + mask))``), and each model judges the protected photo:

- **protected** (at the model's threshold): none of the person's clean enrolment photos is "the same person" by
  the model's own rule (cosine >= threshold, or L2 < threshold for dlib's family);
- **rank-1 protected**: in a gallery of every other face of the benchmark (the person's clean enrolment photos,
  the other people, the distractors), the most similar face is not the person.

Both are also computed for the clean held-out photo (``clean_match_rate``, ``clean_rank1``): a protection rate
means something only where the model recognised the clean photo. Image quality compares protected and clean
held-out photos over the whole canvas and over the face region (the canonical 112x112 box).
"""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from opom.data.real_photos import HoldoutSet
from opom.evaluation.embeddings import embed
from opom.evaluation.metrics import apply_mask_uint8, image_quality

log = logging.getLogger("opom")


def _similarity(model: nn.Module, probes: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """(P, G) scores where higher means more alike: cosine, or minus the L2 distance for L2-rule models."""
    if model.preprocessing.rule == "l2":
        return -torch.cdist(probes.double(), gallery.double())
    return F.normalize(probes.double(), dim=-1) @ F.normalize(gallery.double(), dim=-1).T


def evaluate_holdout(model: nn.Module, data: HoldoutSet, masks: torch.Tensor, batch_size: int = 32) -> dict:
    """Protection of each fold's held-out photo by its mask (I, 3, S, S), judged by ``model``."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        clean = embed(model, data.images, batch_size)
        protected = embed(model, apply_mask_uint8(data.probes, masks.detach().cpu()), batch_size)
    model.train(was_training)
    rule = model.preprocessing
    folds, people = {}, data.people
    for i, fold in enumerate(data.folds):
        enrol = clean[list(fold.enrol)]
        others = [j for j in range(len(data.faces)) if j != fold.probe]
        row = {}
        for kind, probe in (("clean", clean[fold.probe]), ("protected", protected[i])):
            scores = _similarity(model, probe[None], clean[others])[0]
            top = others[int(scores.argmax())]
            row[f"{kind}_match"] = bool(rule.same_person(probe[None], enrol).any())
            row[f"{kind}_rank1"] = people[top] == fold.person
            row[f"{kind}_score"] = round(float(_similarity(model, probe[None], enrol).max()), 4)
        folds[fold.name] = row
    n = len(folds)

    def rate(key: str, value: bool = True) -> float:
        return round(sum(r[key] == value for r in folds.values()) / n, 4)

    return {"protected_rate": rate("protected_match", False), "rank1_protected_rate": rate("protected_rank1", False),
            "clean_match_rate": rate("clean_match"), "clean_rank1": rate("clean_rank1"), "folds_n": n,
            "rule": rule.rule, "threshold": rule.threshold, "folds": folds}


def holdout_quality(data: HoldoutSet, masks: torch.Tensor) -> dict[str, float]:
    """PSNR (dB) / SSIM of the protected held-out photos: whole canvas, and the face region (the 112 box)."""
    clean = data.probes
    protected = apply_mask_uint8(clean, masks.detach().cpu())
    x0, y0, x1, y1 = (int(v) for v in data.canvas.face_box())
    whole = image_quality(clean, protected)
    face = image_quality(clean[..., y0:y1, x0:x1], protected[..., y0:y1, x0:x1])
    return {"psnr_db": round(whole["psnr"], 3), "ssim": round(whole["ssim"], 4),
            "face_psnr_db": round(face["psnr"], 3), "face_ssim": round(face["ssim"], 4)}


class HoldoutEvaluation(L.Callback):
    """After crafting on a :class:`HoldoutSet`: judge every fold's held-out photo with the surrogates (white-box)
    and the panel, each model labelled with its family and whether that family was held out of the crafting.
    Writes ``results.json`` and prints a table."""

    def __init__(self, panel: dict, families: dict[str, str], output_dir: str | Path, run_info: dict):
        self.panel, self.families, self.output_dir, self.run_info = panel, families, Path(output_dir), run_info
        self.results: dict | None = None
        self._start = time.perf_counter()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def _models(self, surrogates: dict[str, nn.Module], data: HoldoutSet, masks: torch.Tensor) -> dict:
        used = {self.families[name] for name in surrogates}
        models = {}
        for name, build in {**{n: (lambda m=m: m) for n, m in surrogates.items()}, **self.panel}.items():
            model = build()
            family = self.families[name]
            models[name] = {"family": family, "whitebox": name in surrogates, "held_out": family not in used,
                            **evaluate_holdout(model, data, masks)}
        return models

    def evaluate(self, surrogates: dict[str, nn.Module], data: HoldoutSet, masks: torch.Tensor) -> dict:
        """The universal masks (one per fold, crafted on the enrolment photos) on the held-out photos."""
        crafting_s = time.perf_counter() - self._start
        info = {k: v for k, v in self.run_info.items() if k != "config"}
        self.results = {**info, "protocol": "holdout",
                        "surrogate_families": sorted({self.families[name] for name in surrogates}),
                        "photos": len(data.faces), "folds": len(data.folds),
                        "seconds_per_fold": round(crafting_s / max(len(data.folds), 1), 2),
                        "models": self._models(surrogates, data, masks), "image_quality": holdout_quality(data, masks)}
        self._write("universal masks", self.results)
        return self.results

    def evaluate_refined(self, surrogates: dict[str, nn.Module], data: HoldoutSet, masks: torch.Tensor,
                         eps_used: torch.Tensor, seconds: float, settings: dict) -> dict:
        """The same masks refined on each held-out photo (:mod:`opom.refine`), added as ``results["refined"]``."""
        refined = {"settings": settings, "eps_used_mean": round(float(eps_used.mean()), 3),
                   "eps_used": [round(float(e), 3) for e in eps_used],
                   "seconds_per_photo": round(seconds / max(len(data.folds), 1), 2),
                   "models": self._models(surrogates, data, masks), "image_quality": holdout_quality(data, masks)}
        self.results["refined"] = refined
        self._write("refined on each held-out photo", {**self.results, **refined})
        return self.results

    def _write(self, what: str, shown: dict) -> None:
        from opom.evaluation.callbacks import write_json_atomic

        write_json_atomic(self.output_dir / "results.json", self.results)
        log.info("held-out photos, %s (%s, %s, surrogates %s, eps %g):\n%s", what, shown["method"], shown["attack"],
                 shown["surrogate"], shown["eps"], format_holdout(shown))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        surrogates = {model.name: model for model in pl_module.surrogates}
        self.evaluate(surrogates, trainer.datamodule.protection, pl_module.all_masks().cpu())


def format_holdout(results: dict) -> str:
    lines = ["| model | family | role | clean match | protected (threshold) | clean rank-1 | protected (rank-1) |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results["models"].items():
        role = "white-box" if r["whitebox"] else ("held-out family" if r["held_out"] else "family seen")
        lines.append(f"| {name} | {r['family']} | {role} | {r['clean_match_rate']:.2f} | {r['protected_rate']:.2f} | "
                     f"{r['clean_rank1']:.2f} | {r['rank1_protected_rate']:.2f} |")
    q = results["image_quality"]
    lines.append(f"\nheld-out photos: {results['folds']} (of {results['photos']} faces); face region PSNR "
                 f"{q['face_psnr_db']:.2f} dB, SSIM {q['face_ssim']:.4f}; canvas PSNR {q['psnr_db']:.2f} dB")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- the sweep's matrix
MATRIX_COLUMNS = ["surrogates", "target", "target_family", "held_out", "whitebox", "mask", "options", "method",
                  "attack", "eps", "photos", "protected_rate", "rank1_protected_rate", "clean_match_rate",
                  "clean_rank1", "psnr_db", "ssim", "face_psnr_db", "face_ssim", "seconds_per_fold", "eps_used", "job"]


def transfer_rows(sweep_dir: Path) -> list[dict]:
    """One row per job (surrogate set) and target model, from the held-out-protocol results of a sweep."""
    rows = []
    for path in sorted(Path(sweep_dir).glob("**/results.json")):
        res = json.loads(path.read_text())
        if res.get("protocol") != "holdout":
            continue
        variants = [("universal", res, res["eps"], res["seconds_per_fold"])]
        if res.get("refined"):
            r = res["refined"]
            variants.append(("refined", r, r["eps_used_mean"], res["seconds_per_fold"] + r["seconds_per_photo"]))
        for mask, part, eps_used, seconds in variants:
            for target, r in part["models"].items():
                rows.append({"surrogates": res["surrogate"], "target": target, "target_family": r["family"],
                             "held_out": r["held_out"], "whitebox": r["whitebox"], "mask": mask,
                             "options": res.get("options", ""), "method": res["method"], "attack": res["attack"],
                             "eps": res["eps"], "photos": res["folds"],
                             **{k: r[k] for k in ("protected_rate", "rank1_protected_rate", "clean_match_rate",
                                                  "clean_rank1")},
                             **part["image_quality"], "seconds_per_fold": seconds, "eps_used": eps_used,
                             "job": str(path.parent.relative_to(sweep_dir))})
    return rows


def matrix_markdown(rows: list[dict]) -> str:
    """Held-out families only: for each target, the protection when its whole family was left out of crafting."""
    held = [r for r in rows if r["held_out"]]
    lines = ["| target | family | surrogates (crafted with) | options | mask | eps | held-out photos | clean match | "
             "protected (threshold) | clean rank-1 | protected (rank-1) | face PSNR dB | face SSIM |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(held, key=lambda r: (r["options"], r["mask"], r["eps"], r["target_family"], r["target"])):
        lines.append(f"| {r['target']} | {r['target_family']} | {r['surrogates']} | {r['options'] or 'paper'} | "
                     f"{r['mask']} | {r['eps_used']:g} | {r['photos']} | {r['clean_match_rate']:.2f} | "
                     f"{r['protected_rate']:.2f} | {r['clean_rank1']:.2f} | {r['rank1_protected_rate']:.2f} | "
                     f"{r['face_psnr_db']:.1f} | {r['face_ssim']:.3f} |")
    return "\n".join(lines)


def write_transfer_matrix(sweep_dir: Path) -> list[dict]:
    """``transfer_matrix.csv`` (every row), ``transfer_matrix.md`` (held-out families) and
    ``transfer_matrix.png`` (protection at threshold, surrogate sets x targets, per eps) in ``sweep_dir``."""
    rows = transfer_rows(sweep_dir)
    if not rows:
        return rows
    with open(sweep_dir / "transfer_matrix.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MATRIX_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (sweep_dir / "transfer_matrix.md").write_text(
        "Protection of held-out photos against face-recognition families left out of the crafting "
        "(rates over held-out photos; 'clean' columns: the unprotected photo).\n\n" + matrix_markdown(rows) + "\n")
    from opom.evaluation.plots import transfer_heatmap

    transfer_heatmap(rows, sweep_dir / "transfer_matrix.png")
    return rows
