"""After a multirun: collect every job's ``results.json`` into one table (CSV and Markdown) and figures.

Rows are jobs, named by method, attack, surrogate and eps, plus every other setting the sweep varied (read from
each job's overrides: ``-m attack.iterations=2,16`` adds an ``attack.iterations`` column), so no two rows look
alike unless their jobs were alike.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from opom.evaluation import plots
from opom.evaluation.holdout import matrix_markdown, write_transfer_matrix

log = logging.getLogger("opom")
FIXED = plots.FIXED


def _results(sweep_dir: Path) -> list[tuple[Path, dict]]:
    """Every job's results (shards and other jobs without models left out), in job order."""
    paths = sorted(Path(sweep_dir).glob("**/results.json"), key=lambda p: p.stat().st_mtime_ns)
    return [(p, r) for p, r in ((p, json.loads(p.read_text())) for p in paths)
            if r.get("models") and r.get("protocol") != "holdout"]  # held-out-photo jobs: transfer_matrix.*


# overrides shown by the fixed columns already
_SHOWN = {"method", "attack", "surrogate", "attack.eps"}


def _overrides(path: Path, res: dict) -> dict[str, str]:
    """A job's command-line overrides as {key: value}: from results.json, else Hydra's record of the job."""
    listed = res.get("overrides")
    if listed is None:
        saved = path.parent / ".hydra" / "overrides.yaml"
        listed = list(OmegaConf.load(saved)) if saved.exists() else []
    out = {}
    for item in listed or []:
        key, _, value = str(item).partition("=")
        out[key.lstrip("+~")] = value
    return out


def varied_settings(jobs: list[tuple[Path, dict]]) -> list[dict[str, str]]:
    """Per job, the overrides that differ between the jobs (beyond method, attack, surrogate and eps)."""
    given = [_overrides(p, r) for p, r in jobs]
    keys = [k for k in dict.fromkeys(k for g in given for k in g) if k not in _SHOWN]
    varied = [k for k in keys if len({g.get(k) for g in given}) > 1]
    return [{k: g.get(k, "") for k in varied} for g in given]


def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 12) if values else float("nan")  # no float noise (0.281, not ...997)


def collect(sweep_dir: Path, k: int = 1) -> list[dict]:
    """One row per job: method, attack, surrogate, eps, the varied settings, then PSR@k per black-box model and
    their mean (and, for the clean line, each model's clean top-k and whether it is too low to mean much)."""
    rows = []
    jobs = _results(sweep_dir)
    for (path, res), settings in zip(jobs, varied_settings(jobs), strict=True):
        metric, clean = f"psr_top{k}", f"clean_top{k}"
        row = {key: res[key] for key in ("method", "attack", "surrogate", "eps")}
        row["settings"] = settings
        bb = {n: r for n, r in res["models"].items() if not r["whitebox"]}
        wb = [r for r in res["models"].values() if r["whitebox"]]
        row["whitebox"] = wb[0].get(metric, float("nan")) if wb else float("nan")
        row.update({n: r.get(metric, float("nan")) for n, r in bb.items()})
        row["mean"] = _mean([row[n] for n in bb])
        row["clean"] = {n: r.get(clean, float("nan")) for n, r in bb.items()}
        row["low"] = {n: bool(r.get("low_clean_accuracy")) for n, r in bb.items()}
        row["min_clean_top1"] = res.get("min_clean_top1")
        row["job"] = str(path.parent.relative_to(sweep_dir))
        rows.append(row)
    return rows


def models_of(rows: list[dict]) -> list[str]:
    """The black boxes of every job, in order of appearance (jobs of a sweep may test different panels)."""
    return plots.models_of(rows)


def long_rows(sweep_dir: Path) -> list[dict]:
    """Every scalar metric of every model of every job, one row each (job, method, attack, surrogate, eps, the
    varied settings, model, whitebox, transform, metric, value; transform is empty for the untransformed probes)
    — for plotting tools and spreadsheets."""
    out = []
    jobs = _results(sweep_dir)
    for (path, res), settings in zip(jobs, varied_settings(jobs), strict=True):
        base = {"job": str(path.parent.relative_to(sweep_dir)), **{k: res[k] for k in ("method", "attack",
                                                                                     "surrogate", "eps")},
                **settings}
        for model, r in res["models"].items():
            blocks = [("", r), *((t, rates) for t, rates in (r.get("robustness") or {}).items())]
            for transform, block in blocks:
                for metric, value in block.items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        out.append({**base, "model": model, "whitebox": r["whitebox"], "transform": transform,
                                    "metric": metric, "value": value})
    return out


def _clean_cell(rows: list[dict], model: str) -> str:
    """A model's clean accuracy over the jobs: one value, or min-max when the jobs' worlds differ; (!) when low."""
    values = sorted({r["clean"][model] for r in rows if model in r["clean"]})
    if not values:
        return "-"
    text = f"{values[0]:.3f}" if len(values) == 1 else f"{values[0]:.3f}-{values[-1]:.3f}"
    return text + (" (!)" if any(r.get("low", {}).get(model) for r in rows) else "")


def to_markdown(rows: list[dict], k: int = 1) -> str:
    models = models_of(rows)
    settings = list(rows[0].get("settings") or {})
    head = ("| method | attack | surrogate | eps | " + "".join(f"{s} | " for s in settings) + "white-box | "
            + " | ".join(models) + " | mean |")
    lines = [head, "|" + "---|" * (6 + len(settings) + len(models))]
    for r in rows:
        vals = " | ".join(f"{r.get(m, float('nan')):.3f}" for m in models)
        extra = "".join(f"{r['settings'].get(s, '')} | " for s in settings)
        lines.append(f"| {r['method']} | {r['attack']} | {r['surrogate']} | {r['eps']:g} | {extra}"
                     f"{r['whitebox']:.3f} | {vals} | {r['mean']:.3f} |")
    accuracies = " | ".join(_clean_cell(rows, m) for m in models)
    lines.append(f"| *clean top-{k} accuracy* | | | | " + "| " * len(settings) + f"| {accuracies} | |")
    if any(any(r.get("low", {}).values()) for r in rows):
        floor = rows[0].get("min_clean_top1")
        lines.append(f"\n(!) clean top-1 below {floor if floor is not None else 'the floor'}: the model hardly "
                     f"recognises the unprotected photos, so its PSR says little about the masks")
    return "\n".join(lines)


def write_summary(sweep_dir: Path) -> tuple[list[dict], dict[str, Path]]:
    """``summary.md``, ``summary.csv`` and the figures of a sweep folder; returns the rows and the figures."""
    sweep_dir = Path(sweep_dir)
    rows = collect(sweep_dir)
    if not rows:
        return rows, {}
    sections = [f"PSR@1 (protection success rate at rank 1; higher is better)\n\n{to_markdown(rows)}\n"]
    for k in (5, 10):
        rows_k = collect(sweep_dir, k)
        if any(r["mean"] == r["mean"] for r in rows_k):  # not NaN: the jobs measured rank k
            sections.append(f"PSR@{k}\n\n{to_markdown(rows_k, k)}\n")
    (sweep_dir / "summary.md").write_text("\n".join(sections))
    settings = list(rows[0]["settings"])
    flat = [{**{k: v for k, v in r.items() if k not in ("clean", "low", "settings")}, **r["settings"]} for r in rows]
    fields = ["method", "attack", "surrogate", "eps", *settings, "whitebox", *models_of(rows), "mean", "job"]
    _write_csv(sweep_dir / "summary.csv", flat, fields)
    long = long_rows(sweep_dir)
    _write_csv(sweep_dir / "summary_long.csv", long, list(long[0]) if long else [])
    figures = {"psr_per_model": plots.psr_per_model(rows, sweep_dir / "psr_per_model.png"),
               "psr_vs_eps": plots.psr_vs_eps(rows, sweep_dir / "psr_vs_eps.png"),
               "examples": plots.examples_grid([(plots.label(r), sweep_dir / r["job"] / "examples.png") for r in rows],
                                               sweep_dir / "examples_grid.png")}
    return rows, {k: v for k, v in figures.items() if v is not None}


def _write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def log_to_wandb(config: DictConfig, sweep_dir: Path, rows: list[dict], figures: dict[str, Path]) -> None:
    """With ``logger=wandb``: one more run in the sweep's group holding the summary table and figures (faces
    only with ``privacy.face_images=true``)."""
    import wandb

    from opom.resolvers import wandb_group

    logger = OmegaConf.to_container(config.logger, resolve=False)
    faces = config.get("privacy", {}).get("face_images") is True
    models = models_of(rows)
    settings = list(rows[0]["settings"])
    columns = ["method", "attack", "surrogate", "eps", *settings, "whitebox", *models, "mean"]
    rows = [{**r, **r["settings"]} for r in rows]
    run = wandb.init(project=logger.get("project", "opom"), group=wandb_group("MULTIRUN", str(sweep_dir)),
                     name="summary", job_type="sweep-summary", dir=str(sweep_dir),
                     mode="offline" if logger.get("offline", True) else "online", reinit="finish_previous")
    payload = {"summary": wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])}
    for name, path in figures.items():
        if name != "examples" or faces:
            payload[name] = wandb.Image(str(path))
    run.log(payload)
    run.finish()


class SweepSummary(Callback):
    """Hydra callback: on multirun end, write ``summary.csv``, ``summary.md`` (PSR@1) and the figures
    (``psr_per_model.png``, ``psr_vs_eps.png`` when eps varies, ``examples_grid.png`` when the jobs made
    examples) in the sweep folder; with ``logger=wandb`` also a summary run in the sweep's group."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        matrix = write_transfer_matrix(sweep_dir)
        if matrix:
            print(f"\nTransfer matrix ({sweep_dir}/transfer_matrix.csv, .md, .png), held-out families:\n"
                  f"{matrix_markdown(matrix)}\n")
        rows, figures = write_summary(sweep_dir)
        if not rows:
            return
        if "Wandb" in str(config.get("logger", {}).get("_target_", "")):
            log_to_wandb(config, sweep_dir, rows, figures)
        listed = ", ".join(p.name for p in figures.values())
        print(f"\nSweep summary ({sweep_dir}/summary.md; figures: {listed}), PSR@1:\n{to_markdown(rows)}\n")
