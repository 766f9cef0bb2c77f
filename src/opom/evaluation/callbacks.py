"""Thin Lightning callbacks over the pure evaluation functions and the mask file format."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import lightning as L
from torch import nn

from opom.data.alignment import Canvas
from opom.evaluation.plots import example_strip, mask_preview
from opom.evaluation.transfer import evaluate_model, mask_image_quality
from opom.masks import MaskSet, mask_metadata, save_masks

log = logging.getLogger("opom")


def write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


class MaskWriter(L.Callback):
    """After crafting, save ``masks.safetensors`` (self-describing) and ``masks_preview.png``; with
    ``examples`` (faces allowed in figures, see ``privacy.face_images``) also ``examples.png``: clean, mask and
    protected test face of the first identities."""

    def __init__(self, output_dir: str | Path, run_info: dict, preview: bool = True, examples: bool = False,
                 max_examples: int = 8):
        self.output_dir, self.run_info, self.preview = Path(output_dir), run_info, preview
        self.examples, self.max_examples = examples, max_examples

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        names = trainer.datamodule.protection.names
        canvas = getattr(trainer.datamodule.protection, "canvas", Canvas())
        template = canvas.template()
        info, masks = self.run_info, pl_module.all_masks().cpu()
        ms = MaskSet(masks=masks, identities=list(names), surrogate=info["surrogate"],
                     method=info["method"], attack=info["attack"], eps=info["eps"],
                     image_size=masks.shape[-1], template=canvas.name, template_points=template.points,
                     extra={"config": info.get("config", {}), "dataset": info.get("dataset", {})})
        store, path = pl_module.mask_store, self.output_dir / "masks.safetensors"
        path = save_masks(path, ms) if store is None else store.save(path, mask_metadata(ms))  # chunked from disk
        log.info("masks saved to %s", path)
        if self.preview:
            mask_preview(ms.masks, ms.eps, self.output_dir / "masks_preview.png", names=ms.identities)
        if self.examples:
            k = self.max_examples
            clean = trainer.datamodule.protection.test_images[:k, 0]
            example_strip(clean, ms.masks[:k], ms.eps, self.output_dir / "examples.png", names=ms.identities[:k])


def _ks(models: dict) -> list[int]:
    return sorted({int(k[len("psr_top"):]) for r in models.values() for k in r if k.startswith("psr_top")})


def format_table(results: dict) -> str:
    """Markdown tables of one run's results: identification (clean top-1, PSR@k), verification at FAR 1e-3 and
    at the model's own threshold, a flag on models that hardly recognise the clean photos, the robustness
    transforms, and image quality."""
    models = results["models"]
    ks = _ks(models)
    floor = results.get("min_clean_top1")
    lines = ["| model | white-box | clean top-1 | " + " | ".join(f"PSR@{k}" for k in ks)
             + " | TAR@FAR1e-3 clean -> protected | PSR at own threshold |",
             "|---|---|---|" + "---|" * len(ks) + "---|---|"]
    low = False
    for name, r in models.items():
        flag = " (!)" if r.get("low_clean_accuracy") else ""
        low |= bool(flag)
        at_thr = (f"{r['psr_at_threshold']:.3f} (t={r['threshold']:g})" if "psr_at_threshold" in r else "-")
        lines.append(f"| {name} | {'yes' if r['whitebox'] else 'no'} | {r['clean_top1']:.3f}{flag} | "
                     + " | ".join(f"{r.get(f'psr_top{k}', float('nan')):.3f}" for k in ks)
                     + f" | {r['tar_clean@far0.001']:.3f} -> {r['tar_protected@far0.001']:.3f} | {at_thr} |")
    if low:
        lines.append(f"\n(!) clean top-1 below {floor:g}: this model hardly recognises the unprotected photos of "
                     f"these people, so its PSR says little about the masks")
    robust = [(name, t, rates) for name, r in models.items() for t, rates in (r.get("robustness") or {}).items()]
    if robust:
        lines += ["\nafter a transform of the probes (the gallery stays clean):",
                  "| model | transform | clean top-1 | " + " | ".join(f"PSR@{k}" for k in ks)
                  + " | PSR at own threshold |",
                  "|---|---|---|" + "---|" * len(ks) + "---|"]
        for name, t, rates in robust:
            at_thr = f"{rates['psr_at_threshold']:.3f}" if "psr_at_threshold" in rates else "-"
            lines.append(f"| {name} | {t} | {rates['clean_top1']:.3f} | "
                         + " | ".join(f"{rates.get(f'psr_top{k}', float('nan')):.3f}" for k in ks) + f" | {at_thr} |")
    quality = results.get("image_quality")
    if quality:
        lpips = (f", LPIPS {quality['lpips']:.4f}" if "lpips" in quality
                 else f" (no LPIPS: {quality['lpips_unavailable']})" if "lpips_unavailable" in quality else "")
        lines.append(f"\nprotected images: PSNR {quality['psnr']:.2f} dB, SSIM {quality['ssim']:.4f}{lpips}")
    return "\n".join(lines)


def flat_metrics(results: dict) -> dict[str, float]:
    """Every number of ``results["models"]`` as ``eval/<model>/<metric>`` (robustness as
    ``eval/<model>/<transform>/<metric>``) for the loggers (``csv/metrics.csv``, wandb)."""
    out = {}
    for name, r in results["models"].items():
        for k, v in r.items():
            if isinstance(v, (int, float)):
                out[f"eval/{name}/{k}"] = float(v)
        for t, rates in (r.get("robustness") or {}).items():
            out.update({f"eval/{name}/{t}/{k}": float(v) for k, v in rates.items() if isinstance(v, (int, float))})
    return out


class TransferEvaluation(L.Callback):
    """After crafting, test the masks on the surrogate (white-box) and on every black-box model.

    ``panel`` maps model names to zero-argument constructors; models are built one at a time and released
    after use. ``model_keys`` (name -> :func:`opom.models.zoo.model_key`) and ``cache_dir`` let the gallery
    embeddings of each model be cached across runs. Writes ``results.json`` in ``output_dir``, logs the rates,
    and prints a table.
    """

    def __init__(self, panel: dict[str, Callable[[], nn.Module]], output_dir: str | Path, run_info: dict,
                 ks: tuple[int, ...] = (1, 5, 10), batch_size: int = 256, robustness: tuple[str, ...] = (),
                 chunk: int = 8192, cache_dir: str | Path | None = None, model_keys: dict[str, dict] | None = None,
                 min_clean_top1: float = 0.5):
        self.panel, self.output_dir, self.run_info = panel, Path(output_dir), run_info
        self.ks, self.batch_size, self.robustness = tuple(ks), batch_size, tuple(robustness)
        self.chunk, self.cache_dir, self.model_keys = chunk, cache_dir, dict(model_keys or {})
        self.min_clean_top1 = float(min_clean_top1)
        self.results: dict | None = None

    def _rates(self, name: str, model, data, masks, whitebox: bool) -> dict:
        rates = evaluate_model(model, data, masks, self.ks, self.batch_size, self.robustness, self.cache_dir,
                               self.model_keys.get(name), self.chunk)
        # a PSR means little when the model did not recognise the clean photos in the first place
        return {**rates, "whitebox": whitebox, "low_clean_accuracy": rates["clean_top1"] < self.min_clean_top1}

    def evaluate(self, surrogates: dict[str, nn.Module], data, masks) -> dict:
        """Results of ``masks`` on ``data`` for the surrogates (white-box; ``{name: model}``, may be empty) and the
        panel."""
        models = {}
        for name, surrogate in surrogates.items():
            models[name] = self._rates(name, surrogate, data, masks, True)
        for name, build in self.panel.items():
            model = build()
            models[name] = self._rates(name, model, data, masks, whitebox=False)
            del model
        info = {k: v for k, v in self.run_info.items() if k != "config"}
        self.results = {**info, "min_clean_top1": self.min_clean_top1, "models": models,
                        "image_quality": mask_image_quality(data, masks)}
        write_json_atomic(self.output_dir / "results.json", self.results)
        varied = f"; {' '.join(info['overrides'])}" if info.get("overrides") else ""
        log.info("transfer evaluation (%s, %s, surrogate %s, eps %g%s):\n%s", info["method"], info["attack"],
                 info["surrogate"], info["eps"], varied, format_table(self.results))
        return self.results

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        surrogates = {model.name: model for model in pl_module.surrogates}
        results = self.evaluate(surrogates, trainer.datamodule.protection, pl_module.all_masks().cpu())
        for logger in trainer.loggers:
            logger.log_metrics(flat_metrics(results))


class WandbReport(L.Callback):
    """With ``logger=wandb``, after the evaluation: the results as a table and a bar chart, the summary numbers,
    the mask preview (masks only, no face) and — only when ``face_images`` is true — the example faces."""

    def __init__(self, evaluation: TransferEvaluation, output_dir: str | Path, face_images: bool = False):
        self.evaluation, self.output_dir, self.face_images = evaluation, Path(output_dir), face_images

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import wandb
        from lightning.pytorch.loggers import WandbLogger

        results = self.evaluation.results
        runs = [lg.experiment for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not results or not runs:
            return
        columns = ["model", "whitebox", "clean_top1", "psr_top1", "psr_top5", "psr_top10",
                   "tar_clean@far0.001", "tar_protected@far0.001"]
        table = wandb.Table(columns=columns, data=[[name] + [r.get(c) for c in columns[1:]]
                                                   for name, r in results["models"].items()])
        blackbox = [r["psr_top1"] for r in results["models"].values() if not r["whitebox"]]
        payload = {"results": table,
                   "psr_top1_per_model": wandb.plot.bar(table, "model", "psr_top1", title="PSR@1 per model"),
                   "psr_top1_blackbox_mean": sum(blackbox) / max(len(blackbox), 1),
                   **{f"image_quality/{k}": v for k, v in (results.get("image_quality") or {}).items()}}
        if (self.output_dir / "masks_preview.png").exists():
            payload["masks_preview"] = wandb.Image(str(self.output_dir / "masks_preview.png"),
                                                   caption="masks, mid-grey = 0, +-eps stretched")
        if self.face_images and (self.output_dir / "examples.png").exists():
            payload["examples"] = wandb.Image(str(self.output_dir / "examples.png"),
                                              caption="rows: clean | mask | protected")
        for run in runs:
            run.log(payload)
            run.summary["psr_top1_blackbox_mean"] = payload["psr_top1_blackbox_mean"]
