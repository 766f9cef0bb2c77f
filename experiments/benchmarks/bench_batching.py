"""Identities per hour: batched crafting against one identity at a time (the reference's loop structure).

    python experiments/benchmarks/bench_batching.py [--quick] [--out FILE.md]

The same people (the first ``--identities`` of the default synthetic world), the same trained surrogate
(small_resnet, ArcFace) and the default convex hull + FIM (16 iterations) are crafted by the pipeline's
crafter with ``identities_per_batch`` = 1 (the reference: one person after the other) and = 16 (the
default), interleaved over rounds. Both craft the same masks (identities never interact; the table gives
the largest difference in grey levels, float32 convolutions may round differently per batch size).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchlib import craft_seconds, default_world, interleaved, machine_header, median, quiet, subset

from opom.attack import FIM
from opom.methods import METHODS


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 identities, batches of 1 and 8")
    ap.add_argument("--identities", type=int, default=None)
    ap.add_argument("--batches", type=int, nargs="+", default=None)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("identity_batching.md"))
    args = ap.parse_args(argv)
    rounds = args.rounds or 1
    args.identities = args.identities or (8 if args.quick else 16)
    args.batches = args.batches or [1, args.identities]
    quiet()
    _, protection, surrogate = default_world()
    people = subset(protection, args.identities)
    attack, method = FIM(), METHODS["convex_hull"]()
    masks = {}

    def timed(per_batch):
        def measure():
            seconds, masks[per_batch] = craft_seconds(surrogate, method, attack, people, per_batch)
            return seconds
        return measure

    craft_seconds(surrogate, method, attack, subset(protection, 2), 2)  # warm-up
    first, second = args.batches[0], args.batches[-1]
    pairs = interleaved(timed(first), timed(second), rounds=rounds)
    t_first, t_second = median(p[0] for p in pairs), median(p[1] for p in pairs)
    diff = float((masks[first] - masks[second]).abs().max()) * 255
    rows = [f"| {b} | {t:.1f} | {args.identities / t * 3600:.0f} | {t_first / t:.2f}x |"
            for b, t in ((first, t_first), (second, t_second))]
    for row in rows:
        print(row)
    summary = (f"**{second} identities per batch: {args.identities / t_second * 3600:.0f} identities/hour, "
               f"{t_first / t_second:.1f}x the {args.identities / t_first * 3600:.0f}/hour of {first} at a time.**\n\n")
    text = (machine_header("Identity batching: identities per hour") + "\n" + summary +
            f"{args.identities} identities x {people.mask_images.shape[1]} images, convex hull + FIM "
            f"({attack.iterations} iterations), small_resnet (ArcFace, trained), CPU; median of {rounds} "
            f"interleaved round(s). Crafting time only (Trainer.fit epoch: data, steps, logging).\n\n"
            "| identities per batch | seconds | identities / hour | speed-up |\n|---|---|---|---|\n"
            + "\n".join(rows) + "\n\n"
            f"Largest mask difference between the two: {diff:.2g} grey levels "
            "(identities never interact; float32 convolutions may round differently per batch size).\n")
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
