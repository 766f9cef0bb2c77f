"""Figures of runs and sweeps (matplotlib, Agg backend, written atomically as PNG).

- :func:`psr_per_model` — PSR@1 of every job on every model of the panel, clean accuracy marked;
- :func:`psr_vs_eps` — mean black-box PSR@1 against the budget, one line per method/attack/surrogate;
- :func:`example_strip` — one job's clean | mask | protected faces for the first identities;
- :func:`examples_grid` — the strips of a sweep's jobs, one row each, labelled.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from opom.evaluation.metrics import apply_mask_uint8

FIXED = ("method", "attack", "surrogate", "eps", "whitebox", "mean", "clean", "job")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=130, bbox_inches="tight")
    os.replace(tmp, path)
    return path


def label(row: dict) -> str:
    return f"{row['method']} / {row['attack']} / {row['surrogate']} / eps {row['eps']:g}"


def psr_per_model(rows: list[dict], path: Path) -> Path:
    """Grouped bars: x = models (white-box first), one bar per job; clean top-1 of each black box as a dash."""
    plt = _pyplot()
    models = ["whitebox"] + [k for k in rows[0] if k not in FIXED]
    x = np.arange(len(models))
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(models) + 0.25 * len(rows)), 4.2))
    cmap = plt.get_cmap("tab10" if len(rows) <= 10 else "tab20")
    for i, row in enumerate(rows):
        values = [row.get(m, np.nan) for m in models]
        ax.bar(x - 0.4 + width * (i + 0.5), values, width, label=label(row), color=cmap(i % cmap.N))
    clean = rows[0]["clean"]
    ax.plot(x[1:], [clean.get(m, np.nan) for m in models[1:]], "k_", markersize=28, markeredgewidth=2,
            label="clean top-1 accuracy", linestyle="none")
    ax.set_xticks(x, ["white-box\n(surrogate)"] + models[1:])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("PSR@1 (higher = better protected)")
    ax.set_title("Protection success rate at rank 1, per face model")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    path = _save(fig, path)
    plt.close(fig)
    return path


def psr_vs_eps(rows: list[dict], path: Path) -> Path | None:
    """Mean black-box PSR@1 against eps, one line per method/attack/surrogate; None with fewer than 2 eps."""
    if len({r["eps"] for r in rows}) < 2:
        return None
    plt = _pyplot()
    lines: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        lines[f"{r['method']} / {r['attack']} / {r['surrogate']}"].append((r["eps"], r["mean"]))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, points in lines.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    ax.set_xlabel("eps (grey levels, L-inf budget of the mask)")
    ax.set_ylabel("mean black-box PSR@1")
    ax.set_ylim(0, 1.0)
    ax.set_title("Protection against the mask budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    path = _save(fig, path)
    plt.close(fig)
    return path


def example_strip(clean: torch.Tensor, masks: torch.Tensor, eps: float, path: Path) -> Path:
    """Three rows for the first identities: a clean test face, its mask (mid-grey = 0, +-eps stretched to the
    full range) and the protected face as the evaluation sees it (uint8 truncation). clean: uint8 (k, 3, H, W)."""
    from torchvision.utils import make_grid

    protected = apply_mask_uint8(clean, masks)
    shown_mask = ((masks.double() / (2 * eps / 255.0) + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    grid = make_grid(torch.cat([clean, shown_mask, protected]), nrow=len(clean), padding=2, pad_value=255)
    from PIL import Image

    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(tmp)
    os.replace(tmp, path)
    return path


def examples_grid(strips: list[tuple[str, Path]], path: Path) -> Path | None:
    """The jobs' example strips stacked, each titled with its job (rows: clean, mask, protected)."""
    strips = [(name, p) for name, p in strips if Path(p).exists()]
    if not strips:
        return None
    plt = _pyplot()
    images = [plt.imread(p) for _, p in strips]
    width = max(im.shape[1] for im in images)
    fig, axes = plt.subplots(len(images), 1, figsize=(width / 90, sum(im.shape[0] for im in images) / 90 + 0.35 *
                                                      len(images)), squeeze=False)
    for ax, (name, _), im in zip(axes[:, 0], strips, images, strict=True):
        ax.imshow(im)
        ax.set_title(f"{name}   (rows: clean | mask, +-eps stretched | protected)", fontsize=8, loc="left")
        ax.axis("off")
    path = _save(fig, path)
    plt.close(fig)
    return path


def transfer_heatmap(rows: list[dict], path: Path) -> Path:
    """Protection at each target's threshold: surrogate sets (rows) x target models (columns), one panel per eps
    (and method/attack when they vary). Cells whose target family was among the surrogates are hatched and marked
    "seen" (white-box or same family); the others are the honest, held-out-family numbers."""
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    def panel_of(r):
        return r["method"], r["attack"], r["eps"], r.get("options", ""), r.get("mask", "universal")

    panels = sorted({panel_of(r) for r in rows}, key=lambda p: (p[3], p[4], p[2], p[0], p[1]))
    targets = list(dict.fromkeys(r["target"] for r in rows))
    sets = list(dict.fromkeys(r["surrogates"] for r in rows))
    fig, axes = plt.subplots(1, len(panels), figsize=(1.1 * len(targets) * len(panels) + 3.5, 0.6 * len(sets) + 2.2),
                             squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        method, attack, eps, options, mask = panel
        grid = np.full((len(sets), len(targets)), np.nan)
        seen = np.zeros_like(grid, dtype=bool)
        for r in rows:
            if panel_of(r) == panel:
                i, j = sets.index(r["surrogates"]), targets.index(r["target"])
                grid[i, j], seen[i, j] = r["protected_rate"], not r["held_out"]
        ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        for i in range(len(sets)):
            for j in range(len(targets)):
                if np.isnan(grid[i, j]):
                    continue
                if seen[i, j]:
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="grey", lw=0))
                label = f"{grid[i, j]:.2f}" + ("\nseen" if seen[i, j] else "")
                ax.text(j, i, label, ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(targets)), targets, rotation=35, ha="right")
        ax.set_yticks(range(len(sets)), [s.replace("+", " + ") for s in sets], fontsize=8)
        extra = f"\n{options or 'paper'}, {mask} mask" if (options or mask != "universal") else ""
        ax.set_title(f"{method} / {attack} / eps {eps:g}{extra}", fontsize=9)
        ax.set_xlabel("target model (judged at its own threshold)")
    axes[0][0].set_ylabel("crafted with")
    fig.suptitle("Held-out photos protected (share of photos the target no longer matches)", fontsize=10)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out
