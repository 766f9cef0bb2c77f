"""Figures of runs and sweeps (matplotlib, Agg backend, written atomically as PNG).

- :func:`psr_per_model` — PSR@1 of every job on every model of the panel, clean accuracy marked;
- :func:`psr_vs_eps` — mean black-box PSR@1 against the budget, one line per method/attack/surrogate;
- :func:`example_strip` — one job's clean | mask | protected faces for the first identities, labelled;
- :func:`mask_preview` — the first masks of a job, labelled with their people and the stretch;
- :func:`examples_grid` — the strips of a sweep's jobs, one row each, labelled.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from opom.evaluation.metrics import apply_mask_uint8

# row fields that are not models
FIXED = ("method", "attack", "surrogate", "eps", "settings", "whitebox", "mean", "clean", "low", "min_clean_top1",
         "job")


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


def models_of(rows: list[dict]) -> list[str]:
    """The black boxes of every row, in order of appearance (jobs of a sweep may test different panels)."""
    return list(dict.fromkeys(k for r in rows for k in r if k not in FIXED))


def label(row: dict) -> str:
    """A job's name in legends and titles: method / attack / surrogate / eps, and what else the sweep varied."""
    settings = "".join(f" / {k}={v}" for k, v in (row.get("settings") or {}).items())
    return f"{row['method']} / {row['attack']} / {row['surrogate']} / eps {row['eps']:g}{settings}"


def _wrap(name: str, width: int = 12) -> str:
    """A model name broken at underscores into lines of about ``width`` characters (tick labels)."""
    lines, line = [], ""
    for part in name.split("_"):
        candidate = f"{line}_{part}" if line else part
        if line and len(candidate) > width:
            lines.append(line + "_")
            line = part
        else:
            line = candidate
    return "\n".join([*lines, line])


def psr_per_model(rows: list[dict], path: Path) -> Path:
    """Grouped bars: x = models (white-box first), one bar per job; each job's clean top-1 on each black box as
    a black dash on its bar (hatched: clean top-1 below the floor, the PSR means little there)."""
    plt = _pyplot()
    models = ["whitebox"] + models_of(rows)
    x = np.arange(len(models))
    width = 0.8 / len(rows)
    surrogates = " / ".join(dict.fromkeys(r["surrogate"] for r in rows))
    labels = [f"white-box\n(surrogate\n{surrogates})"] + [_wrap(m) for m in models[1:]]
    group = max(1.3, 0.09 * max(len(line) for lab in labels for line in lab.split("\n")) + 0.35, 0.22 * len(rows))
    fig, ax = plt.subplots(figsize=(max(5.0, group * len(models) + 0.6), 4.2))
    cmap = plt.get_cmap("tab10" if len(rows) <= 10 else "tab20")
    for i, row in enumerate(rows):
        offsets = x - 0.4 + width * (i + 0.5)
        values = [row.get(m, np.nan) for m in models]
        hatch = [None] + ["///" if row.get("low", {}).get(m) else None for m in models[1:]]
        bars = ax.bar(offsets, values, width, label=label(row), color=cmap(i % cmap.N))
        for bar, h in zip(bars, hatch, strict=True):
            if h:
                bar.set_hatch(h)
        clean = [row["clean"].get(m, np.nan) for m in models[1:]]
        ax.hlines(clean, offsets[1:] - width / 2, offsets[1:] + width / 2, colors="k", linewidth=2,
                  label="clean top-1 accuracy" if i == 0 else None)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("PSR@1 (higher = better protected)")
    ax.set_title("Protection success rate at rank 1, per face model", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    if any(any(r.get("low", {}).values()) for r in rows):
        fig.text(0.01, -0.04, "hatched: clean top-1 too low for the PSR to mean much", fontsize=7)
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
        settings = "".join(f" / {k}={v}" for k, v in (r.get("settings") or {}).items())
        lines[f"{r['method']} / {r['attack']} / {r['surrogate']}{settings}"].append((r["eps"], r["mean"]))
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


def _face_grid(rows: list[tuple[str, torch.Tensor]], columns: list[str], title: str, path: Path) -> Path:
    """uint8 images (k, 3, H, W) per labelled row, one titled column per item, as a PNG figure."""
    plt = _pyplot()
    k = max(len(images) for _, images in rows)
    fig, axes = plt.subplots(len(rows), k, figsize=(1.15 * k + 1.4, 1.25 * len(rows) + 0.45), squeeze=False)
    for r, (row_label, images) in enumerate(rows):
        for c in range(k):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(images):
                ax.imshow(images[c].permute(1, 2, 0).numpy(), interpolation="nearest")
            else:
                ax.axis("off")
            if c == 0:
                ax.set_ylabel(row_label, rotation=0, ha="right", va="center", fontsize=8)
            if r == 0 and c < len(columns):
                ax.set_title(columns[c], fontsize=6.5)
    fig.suptitle(title, fontsize=8.5, x=0.02, ha="left")
    fig.subplots_adjust(wspace=0.05, hspace=0.08)
    return _save_closed(plt, fig, path)


def _save_closed(plt, fig, path: Path) -> Path:
    path = _save(fig, path)
    plt.close(fig)
    return path


def stretched(masks: torch.Tensor, eps: float) -> torch.Tensor:
    """Masks as uint8 pictures: mid-grey = 0, -eps black, +eps white (per channel)."""
    return ((masks.double() / (2 * eps / 255.0) + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)


def _short(name: str, width: int = 16) -> str:
    return name if len(name) <= width else name[:width - 1] + "…"


def example_strip(clean: torch.Tensor, masks: torch.Tensor, eps: float, path: Path,
                  names: list[str] | None = None) -> Path:
    """Three labelled rows for the first identities: a clean test face, its mask (mid-grey = 0, +-eps stretched
    to the full range) and the protected face as the evaluation sees it (uint8 truncation), each column titled
    with the person. clean: uint8 (k, 3, H, W)."""
    protected = apply_mask_uint8(clean, masks)
    names = [_short(n) for n in (names or [f"person {i}" for i in range(len(clean))])]
    rows = [("clean", clean), (f"mask\n(+-{eps:g} grey\nlevels,\nstretched)", stretched(masks, eps)),
            ("protected\n(uint8)", protected)]
    return _face_grid(rows, names, f"clean test face, its mask and the protected face (eps {eps:g})", path)


def mask_preview(masks: torch.Tensor, eps: float, path: Path, names: list[str] | None = None,
                 max_items: int = 16, per_row: int = 8) -> Path:
    """The first ``max_items`` masks, ``per_row`` to a row, each titled with its person; mid-grey = 0, -eps
    black, +eps white."""
    masks = masks[:max_items].detach().cpu()
    names = [_short(n) for n in (names or [f"person {i}" for i in range(len(masks))])][:len(masks)]
    pictures = stretched(masks, eps)
    rows = [("", pictures[i:i + per_row]) for i in range(0, len(pictures), per_row)]
    plt = _pyplot()
    k = min(per_row, len(pictures))
    fig, axes = plt.subplots(len(rows), k, figsize=(1.15 * k + 0.3, 1.3 * len(rows) + 0.5), squeeze=False)
    for r, (_, images) in enumerate(rows):
        for c in range(k):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(images):
                ax.imshow(images[c].permute(1, 2, 0).numpy(), interpolation="nearest")
                ax.set_title(names[r * per_row + c], fontsize=6.5)
    fig.suptitle(f"masks of the first {len(masks)} people: mid-grey = 0, black = -{eps:g}, white = +{eps:g} grey "
                 f"levels (per channel)", fontsize=8.5, x=0.02, ha="left")
    fig.subplots_adjust(left=0.01, right=0.99, wspace=0.05, hspace=0.3)
    return _save_closed(plt, fig, path)


def examples_grid(strips: list[tuple[str, Path]], path: Path) -> Path | None:
    """The jobs' example strips (already labelled: clean, mask, protected) stacked, each titled with its job."""
    strips = [(name, p) for name, p in strips if Path(p).exists()]
    if not strips:
        return None
    plt = _pyplot()
    images = [plt.imread(p) for _, p in strips]
    width = max(im.shape[1] for im in images)
    height = sum(im.shape[0] for im in images) / 110 + 0.3 * len(images)
    fig, axes = plt.subplots(len(images), 1, figsize=(max(4.0, width / 110), height), squeeze=False)
    for ax, (name, _), im in zip(axes[:, 0], strips, images, strict=True):
        ax.imshow(im)
        ax.set_title(name, fontsize=8, loc="left")
        ax.axis("off")
    return _save_closed(plt, fig, path)


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
    return _save_closed(plt, fig, path)
