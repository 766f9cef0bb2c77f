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

from opom.evaluation.transfer import evaluate_model, mask_image_quality
from opom.masks import MaskSet, save_masks, save_preview

log = logging.getLogger("opom")


def write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


class MaskWriter(L.Callback):
    """After crafting, save ``masks.safetensors`` (self-describing) and ``masks_preview.png``."""

    def __init__(self, output_dir: str | Path, run_info: dict, preview: bool = True):
        self.output_dir, self.run_info, self.preview = Path(output_dir), run_info, preview

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        names = trainer.datamodule.protection.names
        info = self.run_info
        ms = MaskSet(masks=pl_module.masks.detach().cpu(), identities=list(names), surrogate=info["surrogate"],
                     method=info["method"], attack=info["attack"], eps=info["eps"],
                     image_size=pl_module.masks.shape[-1], extra={"config": info.get("config", {})})
        path = save_masks(self.output_dir / "masks.safetensors", ms)
        log.info("masks saved to %s", path)
        if self.preview:
            save_preview(self.output_dir / "masks_preview.png", ms.masks, ms.eps)


def format_table(results: dict) -> str:
    """A Markdown table of one run's results (identification, verification at FAR 1e-3, image quality)."""
    lines = ["| model | white-box | clean top-1 | PSR@1 | PSR@5 | PSR@10 | TAR@FAR1e-3 clean -> protected |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results["models"].items():
        lines.append(f"| {name} | {'yes' if r['whitebox'] else 'no'} | {r['clean_top1']:.3f} | {r['psr_top1']:.3f} "
                     f"| {r['psr_top5']:.3f} | {r['psr_top10']:.3f} "
                     f"| {r['tar_clean@far0.001']:.3f} -> {r['tar_protected@far0.001']:.3f} |")
    quality = results.get("image_quality")
    if quality:
        lines.append(f"\nprotected images: PSNR {quality['psnr']:.2f} dB, SSIM {quality['ssim']:.4f}")
    return "\n".join(lines)


class TransferEvaluation(L.Callback):
    """After crafting, test the masks on the surrogate (white-box) and on every black-box model.

    ``panel`` maps model names to zero-argument constructors; models are built one at a time and released
    after use. ``model_keys`` (name -> :func:`opom.models.zoo.model_key`) and ``cache_dir`` let the gallery
    embeddings of each model be cached across runs. Writes ``results.json`` in ``output_dir``, logs the rates,
    and prints a table.
    """

    def __init__(self, panel: dict[str, Callable[[], nn.Module]], output_dir: str | Path, run_info: dict,
                 ks: tuple[int, ...] = (1, 5, 10), batch_size: int = 256, robustness: tuple[str, ...] = (),
                 chunk: int = 8192, cache_dir: str | Path | None = None, model_keys: dict[str, dict] | None = None):
        self.panel, self.output_dir, self.run_info = panel, Path(output_dir), run_info
        self.ks, self.batch_size, self.robustness = tuple(ks), batch_size, tuple(robustness)
        self.chunk, self.cache_dir, self.model_keys = chunk, cache_dir, dict(model_keys or {})
        self.results: dict | None = None

    def _rates(self, name: str, model, data, masks, whitebox: bool) -> dict:
        rates = evaluate_model(model, data, masks, self.ks, self.batch_size, self.robustness, self.cache_dir,
                               self.model_keys.get(name), self.chunk)
        return {**rates, "whitebox": whitebox}

    def evaluate(self, surrogate: nn.Module | None, data, masks) -> dict:
        """Results of ``masks`` on ``data`` for the surrogate (white-box, when given) and the panel."""
        models = {}
        if surrogate is not None:
            models[self.run_info["surrogate"]] = self._rates(self.run_info["surrogate"], surrogate, data, masks, True)
        for name, build in self.panel.items():
            model = build()
            models[name] = self._rates(name, model, data, masks, whitebox=False)
            del model
        info = {k: v for k, v in self.run_info.items() if k != "config"}
        self.results = {**info, "models": models, "image_quality": mask_image_quality(data, masks)}
        write_json_atomic(self.output_dir / "results.json", self.results)
        log.info("transfer evaluation (%s, %s, surrogate %s, eps %g):\n%s", info["method"], info["attack"],
                 info["surrogate"], info["eps"], format_table(self.results))
        return self.results

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        results = self.evaluate(pl_module.surrogate, trainer.datamodule.protection, pl_module.masks.detach().cpu())
        for logger in trainer.loggers:
            logger.log_metrics({f"eval/{name}/{k}": float(v) for name, r in results["models"].items()
                                for k, v in r.items() if isinstance(v, (int, float))})
