"""After a multirun: collect every job's ``results.json`` into one table (CSV and Markdown)."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("opom")


def collect(sweep_dir: Path) -> list[dict]:
    """One row per job: method, attack, surrogate, eps, then PSR@1 per black-box model and their mean."""
    rows = []
    for path in sorted(Path(sweep_dir).glob("**/results.json"), key=lambda p: p.stat().st_mtime_ns):  # job order
        res = json.loads(path.read_text())
        row = {k: res[k] for k in ("method", "attack", "surrogate", "eps")}
        bb = {n: r for n, r in res["models"].items() if not r["whitebox"]}
        wb = [r for r in res["models"].values() if r["whitebox"]]
        row["whitebox"] = wb[0]["psr_top1"] if wb else float("nan")
        row.update({n: r["psr_top1"] for n, r in bb.items()})
        row["mean"] = sum(r["psr_top1"] for r in bb.values()) / max(len(bb), 1)
        row["clean"] = {n: r["clean_top1"] for n, r in bb.items()}
        rows.append(row)
    return rows


def to_markdown(rows: list[dict]) -> str:
    models = [k for k in rows[0] if k not in ("method", "attack", "surrogate", "eps", "whitebox", "mean", "clean")]
    head = "| method | attack | surrogate | eps | white-box | " + " | ".join(models) + " | mean |"
    lines = [head, "|" + "---|" * (6 + len(models))]
    for r in rows:
        vals = " | ".join(f"{r.get(m, float('nan')):.3f}" for m in models)
        lines.append(f"| {r['method']} | {r['attack']} | {r['surrogate']} | {r['eps']:g} | {r['whitebox']:.3f} | "
                     f"{vals} | {r['mean']:.3f} |")
    clean = rows[0]["clean"]
    accuracies = " | ".join(f"{clean.get(m, float('nan')):.3f}" for m in models)
    lines.append(f"| *clean top-1 accuracy* | | | | | {accuracies} | |")
    return "\n".join(lines)


class SweepSummary(Callback):
    """Hydra callback: on multirun end, write ``summary.csv`` and ``summary.md`` (PSR@1) in the sweep folder."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = collect(sweep_dir)
        if not rows:
            return
        table = to_markdown(rows)
        title = "PSR@1 (protection success rate at rank 1; higher is better)"
        (sweep_dir / "summary.md").write_text(f"{title}\n\n{table}\n")
        with open(sweep_dir / "summary.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k != "clean"], extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        print(f"\nSweep summary ({sweep_dir}/summary.md), PSR@1:\n{table}\n")
