"""The spread of the demo table over seeds: per method, the mean black-box PSR@1 of every seed setting, and
every black box's clean top-1, as min-max over the settings.

    python experiments/demo/spread.py SWEEP_DIR [SWEEP_DIR ...]   (sweep folders of python run.py -m experiment=demo)

Each job is named by its overrides beyond the method (e.g. ``attack.seed=1``; none = the default seeds).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path


def _setting(res: dict) -> str:
    """A column name: the job's overrides beyond the method; the models' training seeds as one entry."""
    keep = [o for o in res.get("overrides", []) if not o.startswith(("method=", "experiment=", "hydra."))]
    is_model_seed = [o.startswith(("surrogate.", "blackbox.")) and o.split("=", 1)[0].endswith(".seed") for o in keep]
    model_seeds = [o.split("=", 1)[1] for o, m in zip(keep, is_model_seed, strict=True) if m]
    keep = [o for o, m in zip(keep, is_model_seed, strict=True) if not m]
    if model_seeds:
        keep.append("model seeds=" + "/".join(model_seeds))
    return " ".join(keep) or "default seeds"


def collect(sweeps: list[Path]) -> tuple[dict, dict, list[str]]:
    mean: dict[str, dict[str, float]] = defaultdict(dict)  # method -> setting -> mean black-box PSR@1
    clean: dict[str, dict[str, float]] = defaultdict(dict)  # model -> setting -> clean top-1
    settings: list[str] = []
    for sweep in sweeps:
        for path in sorted(sweep.glob("**/results.json"), key=lambda p: p.stat().st_mtime_ns):
            res = json.loads(path.read_text())
            bb = {n: r for n, r in res["models"].items() if not r["whitebox"]}
            setting = _setting(res)
            settings += [setting] if setting not in settings else []
            mean[res["method"]][setting] = sum(r["psr_top1"] for r in bb.values()) / len(bb)
            for n, r in bb.items():
                clean[n][setting] = r["clean_top1"]
    return mean, clean, settings


def to_markdown(mean: dict, clean: dict, settings: list[str]) -> str:
    lines = ["| method | " + " | ".join(settings) + " | min-max |", "|---|" + "---|" * (len(settings) + 1)]
    for method, by in mean.items():
        values = [by.get(s, float("nan")) for s in settings]
        lines.append(f"| {method} | " + " | ".join(f"{v:.3f}" for v in values)
                     + f" | {min(values):.3f}-{max(values):.3f} |")
    for model, by in clean.items():
        values = [by.get(s, float("nan")) for s in settings]
        lines.append(f"| *clean top-1 {model}* | " + " | ".join(f"{v:.3f}" for v in values)
                     + f" | {min(values):.3f}-{max(values):.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(to_markdown(*collect([Path(p) for p in sys.argv[1:]])))
