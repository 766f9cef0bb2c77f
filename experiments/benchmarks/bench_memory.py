"""Peak memory of crafting against the number of identities: it must not grow beyond the data and the masks —
and with the masks on disk (``crafting.mask_store=disk``) not beyond the data.

    python experiments/benchmarks/bench_memory.py [--quick] [--out FILE.md]

Each setting runs in a fresh process (``--child``) that builds a protection set of I identities x 10 uint8
mask images (random pixels: memory does not depend on content), a random-init small_resnet surrogate, and
crafts with the pipeline's pieces (``MaskCrafter`` + ``ProtectionDataModule``, convex hull + FIM, 2
iterations, 16 identities per batch). It reports the peak resident set size (``ru_maxrss``) and the RSS
before crafting; the growth during crafting is compared with what must grow with I: the masks (I x 3 x 112
x 112 float32, the result). The uint8 images (I x 10 x 3 x 112 x 112 bytes) are loaded before crafting and
counted in "before". Everything else — attack state, clean features, projections, activations — is held for
one batch only, so "crafting growth - masks" stays flat as I grows. With ``--store disk`` (both stores are run
by default) the masks of finished batches go to a :class:`~opom.mask_store.MaskStore` file: the crafter holds one
batch's masks, so the crafting growth itself stays flat.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

MiB = 1024 * 1024


def rss_now() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def child(identities: int, per_batch: int, store: str) -> dict:
    import lightning as L
    import torch

    from opom.attack import FIM
    from opom.data.protection import ProtectionDataModule, ProtectionSet
    from opom.logs import quiet_lightning
    from opom.mask_store import MaskStore
    from opom.methods import METHODS
    from opom.models.zoo import ZOO, FaceModel
    from opom.module import MaskCrafter

    quiet_lightning()
    torch.manual_seed(0)
    entry = ZOO["small_resnet"]
    surrogate = FaceModel(entry.make(128), entry.preprocessing, "small_resnet").eval()
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (identities, 12, 3, 112, 112), dtype=torch.uint8, generator=g)
    protection = ProtectionSet([f"p{i}" for i in range(identities)], images[:, :10], images[:, 10:],
                               torch.zeros(2, 3, 112, 112, dtype=torch.uint8))
    attack = FIM(iterations=2)
    with tempfile.TemporaryDirectory() as scratch:
        mask_store = MaskStore(scratch, identities, 112) if store == "disk" else None
        module = MaskCrafter(surrogate, METHODS["convex_hull"](warmup=1), attack, identities, mask_store=mask_store)
        trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, accelerator="cpu")
        before = rss_now()
        trainer.fit(module, datamodule=ProtectionDataModule(protection, per_batch, attack.iterations))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        held = module.masks.numel() * 4  # the parameter: every mask, or the last batch's with a store
        assert module.all_masks().abs().amax() > 0
    return {"identities": identities, "before": before, "peak": peak, "masks": identities * 3 * 112 * 112 * 4,
            "held": held, "images": images.numel()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="up to 1024 identities")
    ap.add_argument("--identities", type=int, nargs="+", default=None)
    ap.add_argument("--per-batch", type=int, default=16)
    ap.add_argument("--stores", default="memory,disk", help="comma-separated: memory, disk")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--store", default="memory", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("crafting_memory.md"))
    args = ap.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.child, args.per_batch, args.store)))
        return 0
    from benchlib import machine_header

    sizes = args.identities or ([16, 256, 1024] if args.quick else [16, 256, 1024, 4096])
    rows, growth = [], {}
    for store in args.stores.split(","):
        for n in sizes:
            done = subprocess.run([sys.executable, __file__, "--child", str(n), "--per-batch", str(args.per_batch),
                                   "--store", store], capture_output=True, text=True, check=True)
            r = json.loads(done.stdout.strip().splitlines()[-1])
            crafting = r["peak"] - r["before"]
            extra = crafting - r["held"]
            growth.setdefault(store, []).append((crafting, extra))
            rows.append(f"| {store} | {n} | {r['images'] / MiB:.0f} | {r['masks'] / MiB:.1f} | {r['held'] / MiB:.1f} | "
                        f"{r['before'] / MiB:.0f} | {r['peak'] / MiB:.0f} | **{crafting / MiB:.0f}** | "
                        f"{extra / MiB:.0f} |")
            print(rows[-1], flush=True)

    def span(values) -> str:
        return f"{min(values) / MiB:.0f}..{max(values) / MiB:.0f} MiB"

    parts = []
    if "memory" in growth:
        parts.append(f"with every mask in memory, crafting memory beyond the images and the masks stays within "
                     f"{span([e for _, e in growth['memory']])}")
    if "disk" in growth:
        parts.append(f"with the masks on disk (`crafting.mask_store=disk`) the whole crafting growth stays within "
                     f"{span([c for c, _ in growth['disk']])}")
    summary = f"**From {sizes[0]} to {sizes[-1]} identities: " + "; ".join(parts) + ".**\n\n"
    text = (machine_header("Crafting memory against the number of identities") + "\n" + summary +
            f"Peak RSS of one process crafting I identities (10 uint8 images each, {args.per_batch} per batch, "
            "convex hull + FIM, random-init small_resnet, CPU). `before` is the RSS after loading the images and "
            "building everything, just before `trainer.fit`; `crafting growth` = peak - before; `held` is the "
            "crafter's mask parameter at the end: every mask (`memory`) or one batch's (`disk`: the others are in "
            "the store's file, whose pages are handed back to the kernel after every batch); the last column "
            "subtracts it.\n\n"
            "| masks | identities | uint8 images (MiB) | masks float32 (MiB) | held in memory (MiB) | "
            "RSS before (MiB) | peak RSS (MiB) | crafting growth (MiB) | growth - held (MiB) |\n"
            "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
            "`growth - held` is one batch's working set (attack state, activations of 160 images, solver buffers), "
            "independent of I. With the masks on disk nothing per identity is held but the uint8 images (which a "
            "very large set would read memory-mapped) and the names: a million identities need memory for one "
            "batch plus ~147 GiB of disk for the masks.\n")
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
