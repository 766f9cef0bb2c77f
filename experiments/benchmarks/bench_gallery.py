"""Evaluation time and peak memory against the distractor-gallery size (10k, 100k, 1M by default).

    python experiments/benchmarks/bench_gallery.py [--sizes 10000 100000 1000000] [--identities 100] [--out FILE.md]

Each size runs in a fresh process (so its peak RSS is its own) through the real evaluation path,
``opom.evaluation.transfer.evaluate_model``: a streamed gallery -> embeddings written to the on-disk cache ->
every identification and verification metric accumulated chunk by chunk. It runs twice per size: first with
an empty cache (embed + score), then again with the cached embeddings (score only: what every later
evaluation of the same model on the same gallery costs).

What is synthetic, and why: the gallery images are seeded blocky noise and the "FR model" is a cheap fixed
projection to 512-d (average-pool + linear), so that a million images can be embedded on a 2-core CPU. Both
only change the embedding stage's cost, which is the model's forward throughput times the gallery size
(see zoo_throughput.md for real models; e.g. iresnet50 at ~9 img/s on this CPU would need ~31 h for 1M).
The scoring stage — what this benchmark is about — costs the same whatever the images and model are.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

PROBES_PER_IDENTITY = 5
DIM = 512


class CheapEmbedder(nn.Module):
    """A fixed random projection of 8x8 average-pooled pixels to ``DIM`` (stands in for a FR model)."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(8)
        self.proj = nn.Linear(3 * 8 * 8, DIM)
        g = torch.Generator().manual_seed(0)
        self.proj.weight.data = torch.randn(DIM, 3 * 8 * 8, generator=g)
        self.proj.bias.data.zero_()

    def forward(self, x):
        return self.proj(self.pool(x).flatten(1) - 0.5)


def noise_images(start: int, stop: int) -> torch.Tensor:
    """Seeded blocky noise (8x8 random cells of 14x14 pixels): cheap to make, distinct per image."""
    g = torch.Generator().manual_seed(start)
    cells = torch.randint(0, 256, (stop - start, 3, 8, 8), generator=g, dtype=torch.uint8)
    return cells.repeat_interleave(14, dim=-1).repeat_interleave(14, dim=-2)


def one_size(size: int, identities: int, cache: str) -> dict:
    """Runs in its own process: evaluate once with an empty cache, once from the cache."""
    from opom.data.gallery import RenderedGallery
    from opom.data.protection import ProtectionSet
    from opom.evaluation.transfer import evaluate_model

    torch.set_num_threads(2)
    people = noise_images(10**9, 10**9 + identities * (PROBES_PER_IDENTITY + 1)).view(identities, -1, 3, 112, 112)
    gallery = RenderedGallery(size, noise_images, {"bench": "noise"})
    data = ProtectionSet([f"p{i}" for i in range(identities)], people[:, :1], people[:, 1:], gallery)
    masks = torch.full((identities, 3, 112, 112), 8 / 255)
    model = CheapEmbedder().eval()
    times = {}
    for stage in ("embed+score", "score (cached)"):
        t = time.perf_counter()
        res = evaluate_model(model, data, masks, cache_dir=cache, model_key={"bench": "cheap"}, batch_size=1024)
        times[stage] = time.perf_counter() - t
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"size": size, **times, "peak_rss_mb": peak_mb, "clean_top1": res["clean_top1"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--identities", type=int, default=100)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("eval_gallery.md"))
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: run one size in this process
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one_size(args.one, args.identities, args.cache)))
        return 0
    rows = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix="opom-bench-gallery-") as cache:
            cmd = [sys.executable, __file__, "--one", str(size), "--identities", str(args.identities), "--cache", cache]
            rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
        print(rows[-1], flush=True)
    base = rows[0]
    lines = [
        "# Evaluation against the gallery size",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} CPU threads, "
        f"torch {torch.__version__}, Python {platform.python_version()}.",
        f"Command: `python experiments/benchmarks/bench_gallery.py --sizes {' '.join(map(str, args.sizes))} "
        f"--identities {args.identities}`",
        f"Probes: {args.identities} identities x {PROBES_PER_IDENTITY} test images, clean and protected; "
        f"embeddings {DIM}-d; chunk 8192; every metric (PSR@1/5/10, TAR@FAR 1e-1..1e-4, per-identity PSR).",
        "Gallery images: seeded blocky noise, embedded by a cheap fixed projection (see the script's docstring: only "
        "the embedding stage depends on them).",
        "",
        "| distractors | embed + score (s) | score from cache (s) | cache-scoring s per 100k | peak RSS (MB) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['size']:,} | {r['embed+score']:.1f} | {r['score (cached)']:.1f} | "
                     f"{r['score (cached)'] / r['size'] * 1e5:.2f} | {r['peak_rss_mb']:.0f} |")
    last = rows[-1]
    lines += ["", f"**From {base['size']:,} to {last['size']:,} distractors ({last['size'] / base['size']:.0f}x): "
              f"embed + score time x{last['embed+score'] / base['embed+score']:.1f}, cached scoring "
              f"x{last['score (cached)'] / base['score (cached)']:.1f}, peak memory "
              f"x{last['peak_rss_mb'] / base['peak_rss_mb']:.2f}.**"]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
