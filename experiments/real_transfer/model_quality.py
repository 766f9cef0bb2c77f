"""How well each real face model tells the people of the offline real photos apart (experiments/real_transfer/).

Every face of the real-photo benchmark (``dataset=real_photos``: 30 faces, three people with 2-3 photos each,
the rest one photo per person) is embedded by every model of the zoo's real families; genuine pairs (same person)
and impostor pairs are scored with each model's own rule. Writes ``model_quality.md`` beside this file.

    python experiments/real_transfer/model_quality.py
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch

from opom.data.real_photos import RealPhotos
from opom.evaluation.embeddings import embed
from opom.models.zoo import ZOO, build_face_model

MODELS = ("sface", "faceres", "faceres_deep", "mobileface", "faceapi", "dlib")
OUT = Path(__file__).with_name("model_quality.md")


def main() -> None:
    data = RealPhotos().holdout_set()
    lines = ["| model | family | rule (threshold; source) | genuine min / mean / max | impostor mean / p95 / p99 / "
             "max | genuine pairs accepted | impostor pairs accepted | rank-1 of genuine probes |",
             "|---|---|---|---|---|---|---|---|"]
    pairs = list(itertools.combinations(range(len(data.faces)), 2))
    genuine = [(i, j) for i, j in pairs if data.people[i] and data.people[i] == data.people[j]]
    impostor = [(i, j) for i, j in pairs if (i, j) not in genuine]
    for name in MODELS:
        model = build_face_model({"name": name, "arch": name}, canvas=data.canvas)
        with torch.no_grad():
            e = embed(model, data.images, 8).double()
        p = model.preprocessing
        if p.rule == "l2":
            score = -torch.cdist(e, e)
        else:
            n = torch.nn.functional.normalize(e, dim=1)
            score = n @ n.T
        g = np.array([score[i, j].item() for i, j in genuine])
        im = np.array([score[i, j].item() for i, j in impostor])
        sign = -1 if p.rule == "l2" else 1
        thr = sign * p.threshold
        probes = [i for i in range(len(data.faces)) if data.people[i] in {data.people[a] for a, _ in genuine}]
        rank1 = sum(data.people[int(torch.cat([score[i, :i], torch.tensor([-1e9]), score[i, i + 1:]]).argmax())]
                    == data.people[i] for i in probes)
        unit = "L2 distance" if p.rule == "l2" else "cosine"
        shown_g, shown_i = sign * g, sign * im  # as the rule reads them: cosines, or distances
        gen = " / ".join(f"{v:.3f}" for v in (shown_g.min(), shown_g.mean(), shown_g.max()))
        imp = " / ".join(f"{v:.3f}" for v in (shown_i.mean(), sign * np.percentile(im, 95),
                                              sign * np.percentile(im, 99), sign * im.max()))
        source = "documented" if "documented" in p.threshold_source else "rough, FAR 1 % here"
        lines.append(f"| {name} | {ZOO[name].family} | {unit} {'<' if sign < 0 else '>='} {p.threshold} "
                     f"({source}) | {gen} | {imp} | {int((g >= thr).sum())}/{len(g)} | "
                     f"{int((im >= thr).sum())}/{len(im)} | {rank1}/{len(probes)} |")
    text = (f"# Real face models on the offline real photos\n\n{len(data.faces)} aligned faces (canvas "
            f"{data.canvas.name}), {len(genuine)} genuine pairs (Obama x3, two women of face-api's demo photos x2 "
            f"each), {len(impostor)} impostor pairs; each model's own rule. L2 models: distances (lower = more "
            f"alike). Rank-1: each photo of the three people against every other face. Thresholds marked rough "
            f"are the 99th percentile of these impostor scores.\n\nMade by `python "
            f"experiments/real_transfer/model_quality.py`.\n\n" + "\n".join(lines) + "\n")
    OUT.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
