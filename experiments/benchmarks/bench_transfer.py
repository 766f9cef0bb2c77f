"""Cost of protecting against unseen models: crafting time per identity with 1, 2 and 4 real surrogates, and
per-photo refinement time, on the real-photo benchmark's canvases (canvas224, CPU).

    python experiments/benchmarks/bench_transfer.py [--quick] [--out FILE.md]

Crafting: the 7 held-out folds of ``dataset=real_photos`` (2 enrolment photos each, padded) crafted as the pipeline
does (``Trainer.fit`` of ``MaskCrafter``, convex hull + FIM), once plain and once with every transfer extension
(``transfer=all``: gradient-normalised ensemble, diversity, jitter, JPEG / resize / blur, face region). Refinement:
``opom.refine`` on the 7 held-out photos (one image each) from zero masks. Needs ``make test-assets``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from benchlib import machine_header, quiet

from opom.attack import FIM, Budget
from opom.data.alignment import face_region
from opom.data.real_photos import RealPhotos
from opom.methods import METHODS
from opom.models.zoo import build_face_model
from opom.refine import RefineSettings, refine
from opom.transforms import RandomTransforms

SETS = {1: ["sface"], 2: ["sface", "faceapi"], 4: ["sface", "faceres", "mobileface", "faceapi"]}
ALL = ["diversity", "jitter", "jpeg", "resize", "blur"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 iterations instead of 16")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("transfer_cost.md"))
    args = ap.parse_args(argv)
    quiet()
    data = RealPhotos().holdout_set()
    iterations = 4 if args.quick else 16
    region = torch.from_numpy(face_region(data.canvas))
    rows = []
    for k, names in SETS.items():
        models = [build_face_model({"name": n, "arch": n}, canvas=data.canvas) for n in names]
        for label, extra in (("paper", {}), ("all extensions", {
                "transforms": RandomTransforms(ALL, p=0.5), "ensemble": "gradient", "budget": Budget(region)})):
            attack = FIM(eps=8, iterations=iterations)
            seconds = _craft(models, attack, data, extra)
            rows.append(f"| {k} ({'+'.join(names)}) | {label} | {iterations} | "
                        f"{seconds / data.num_identities:.2f} |")
            print(rows[-1], flush=True)
        start = time.perf_counter()
        settings = RefineSettings(steps=iterations)

        def make(a, n, init, models=models):
            from opom.module import MaskCrafter

            return MaskCrafter(models, METHODS["convex_hull"](), a, n, data.image_size, init_masks=init)

        refine(make, models, data.probes, torch.zeros(data.num_identities, 3, data.image_size, data.image_size),
               [data.images[list(f.enrol)] for f in data.folds], settings, 8.0, data.canvas.face_box())
        per_photo = (time.perf_counter() - start) / data.num_identities
        rows.append(f"| {k} ({'+'.join(names)}) | refinement of one photo | {iterations} | {per_photo:.2f} |")
        print(rows[-1], flush=True)
    text = (machine_header("Transfer cost: crafting and refinement with real surrogates")
            + f"\n{data.num_identities} held-out folds of the real-photo benchmark (canvas {data.canvas.name}, "
              f"{data.mask_images.shape[1]} enrolment photos each), convex hull + FIM, eps 8.\n\n"
              "| surrogates | crafting | steps | seconds per identity (crafting) or per photo (refinement) |\n"
              "|---|---|---|---|\n" + "\n".join(rows) + "\n")
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


def _craft(models, attack, data, extra) -> float:
    import lightning as L

    from opom.data.protection import ProtectionDataModule
    from opom.module import MaskCrafter

    module = MaskCrafter(models, METHODS["convex_hull"](), attack, data.num_identities, data.image_size, **extra)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    start = time.perf_counter()
    trainer.fit(module, datamodule=ProtectionDataModule(data, 16, attack.iterations))
    return time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())
