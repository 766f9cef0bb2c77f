"""The ablation table and figure of masks against face recognition they never saw (experiments/transfer_ablation/).

Reads the ``transfer_matrix.csv`` of one or more held-out-photo sweeps (``python run.py -m experiment=...``) and writes
``results.md`` and ``ablation.png`` beside this file: for every crafting option (conf/transfer) and eps, the
protection of held-out photos against the held-out families only — universal mask and per-photo refinement —
with the face-region image quality and the crafting time per identity.

    python experiments/transfer_ablation/summarize.py SWEEP_DIR [SWEEP_DIR ...]
"""

from __future__ import annotations

import argparse
import csv
import platform
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["paper", "ensemble=gradient", "diversity", "jitter", "jpeg+resize+blur", "region=face", "dfanet",
         "diversity+jpeg+resize+blur", "diversity+jpeg+resize+blur, region=face, chroma=0.5",
         "diversity+jpeg+resize+blur, region=face, chroma=0.5, texture=0.75",
         "ensemble=gradient, diversity+jitter+jpeg+resize+blur, region=face",
         "ensemble=gradient, diversity+jitter+jpeg+resize+blur, region=face, chroma=0.5, texture=0.75"]
# the targets every sweep holds out (the mean is over these, so that rows compare; mobileface is left out of it:
# it matches too few clean photos for its protection rate to mean anything)
COMMON = ["sface", "faceapi", "dlib"]
NAMES = {"ensemble=gradient, diversity+jitter+jpeg+resize+blur, region=face": "all together",
         "ensemble=gradient, diversity+jitter+jpeg+resize+blur, region=face, chroma=0.5, texture=0.75":
             "all together, softer (chroma 0.5, texture 0.75)"}


def label(row: dict) -> str:
    if row["attack"] == "dfanet_mi":
        return "dfanet"
    return row["options"] or "paper"


def read(sweeps: list[Path]) -> list[dict]:
    rows = []
    for sweep in sweeps:
        with open(sweep / "transfer_matrix.csv") as f:
            rows += [r | {"sweep": str(sweep)} for r in csv.DictReader(f) if r["held_out"] == "True"]
    return rows


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def summarize(rows: list[dict]) -> tuple[list[dict], list[str]]:
    """One entry per (option, eps, mask): held-out protection per target, and their mean."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(label(r), float(r["eps"]), r["mask"])].append(r)
    targets = sorted({r["target"] for r in rows})
    out = []
    for (option, eps, mask), rs in groups.items():
        by_target = {r["target"]: float(r["protected_rate"]) for r in rs}
        rank1 = {r["target"]: float(r["rank1_protected_rate"]) for r in rs}
        out.append({"option": option, "eps": eps, "mask": mask, "targets": by_target, "rank1": rank1,
                    "mean": _mean([by_target[t] for t in COMMON if t in by_target]),
                    "rank1_mean": _mean([rank1[t] for t in COMMON if t in rank1]),
                    "psnr": sum(float(r["face_psnr_db"]) for r in rs) / len(rs),
                    "ssim": sum(float(r["face_ssim"]) for r in rs) / len(rs),
                    "seconds": sum(float(r["seconds_per_fold"]) for r in rs) / len(rs),
                    "eps_used": sum(float(r["eps_used"]) for r in rs) / len(rs), "photos": rs[0]["photos"]})
    key = {o: i for i, o in enumerate(ORDER)}
    out.sort(key=lambda e: (e["mask"] != "universal", e["eps"], key.get(e["option"], 99), e["option"]))
    return out, targets


def markdown(entries: list[dict], targets: list[str]) -> str:
    head = ("| option | mask | eps | " + " | ".join(f"{t} (held out)" for t in targets)
            + " | mean (sface, faceapi, dlib) | mean rank-1 | face PSNR dB | face SSIM | s per identity |")
    lines = [head, "|" + "---|" * (len(targets) + 8)]
    for e in entries:
        cells = [f"{e['targets'][t]:.2f}" if t in e["targets"] else "-" for t in targets]
        eps = f"{e['eps']:g}" if e["mask"] == "universal" else f"{e['eps_used']:g}"
        lines.append(f"| {NAMES.get(e['option'], e['option'])} | {e['mask']} | {eps} | " + " | ".join(cells)
                     + f" | **{e['mean']:.2f}** | {e['rank1_mean']:.2f} | {e['psnr']:.1f} | {e['ssim']:.3f} | "
                       f"{e['seconds']:.0f} |")
    return "\n".join(lines)


def figure(entries: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5.2))
    markers = {"universal": "o", "refined": "^"}
    options = sorted({e["option"] for e in entries}, key=lambda o: (ORDER.index(o) if o in ORDER else 99, o))
    colours = {o: (plt.cm.tab10 if len(options) <= 10 else plt.cm.tab20)(i % 20) for i, o in enumerate(options)}
    for e in entries:
        ax.scatter(e["psnr"], e["mean"], marker=markers.get(e["mask"], "s"), s=46, color=colours[e["option"]],
                   edgecolor="black", linewidth=0.4)
        ax.annotate(f"{e['eps']:g}", (e["psnr"], e["mean"]), fontsize=6, xytext=(4, -3), textcoords="offset points")
    for o in options:
        ax.scatter([], [], color=colours[o], marker="s", label=NAMES.get(o, o).replace(", ", ",\n  "))
    for mask, marker in markers.items():
        ax.scatter([], [], color="grey", marker=marker, label=f"{mask} mask")
    ax.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
              title="crafting (number beside a point: eps)", title_fontsize=7)
    ax.axvline(35, color="grey", lw=0.8, ls="--")
    ax.axhline(0.9, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("face-region PSNR of the protected held-out photos (dB; higher = less visible)")
    ax.set_ylabel("held-out sface, faceapi, dlib no longer match (mean rate)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Protection of photos the mask never saw vs visibility (goal: top right of the dashes)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweeps", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=HERE / "results.md")
    args = ap.parse_args(argv)
    rows = read(args.sweeps)
    entries, targets = summarize(rows)
    figure(entries, args.out.with_name("ablation.png"))
    photos = entries[0]["photos"] if entries else 0
    text = (f"# Masks against face recognition they never saw: what helps (held-out real photos)\n\n"
            f"Each row: masks crafted with the preset of `conf/transfer`, judged on {photos} held-out photos (each "
            f"person's photo the mask never saw) by the target models whose whole family was left out of the "
            f"crafting, at each model's own threshold (protected = the model no longer matches the person's clean "
            f"photos). `refined`: the same mask after 20 more steps on the held-out photo itself (opom.refine; the "
            f"eps column is then the budget it used). Rates move by 1/{photos} per photo. Face PSNR/SSIM: the "
            f"canonical 112 face box of the protected vs clean held-out photos.\n\n"
            f"Made by `bash experiments/transfer_ablation/reproduce.sh` (sweeps: "
            f"{', '.join(s.name for s in args.sweeps)}; python {platform.python_version()}).\n\n"
            + markdown(entries, targets) + "\n\n![protection vs PSNR](ablation.png)\n")
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
