"""Embeddings per second of every zoo architecture on this machine (forward, and forward+input-gradient).

    python experiments/benchmarks/bench_zoo.py [--batch 32] [--repeats 3] [--out FILE.md]

Random weights are used (throughput does not depend on them); entries whose optional extra is missing are
reported as skipped. Writes a Markdown table with the machine, torch version and command.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from opom.models.zoo import ZOO, BuildContext, FaceModel


def _network(arch: str, embedding_size: int):
    entry = ZOO[arch]
    if entry.make is not None:
        return entry.make(embedding_size)
    return entry.build({"name": arch, "arch": arch}, BuildContext())  # bundled weights (sface, dlib)


def _rate(step, batch: int, repeats: int, min_seconds: float = 1.0) -> float:
    """Embeddings/s of ``step`` (one batch), over at least ``repeats`` calls and ``min_seconds``."""
    step()  # warm-up
    calls, start = 0, time.perf_counter()
    while calls < repeats or time.perf_counter() - start < min_seconds:
        step()
        calls += 1
    return batch * calls / (time.perf_counter() - start)


def measure(arch: str, batch: int, repeats: int) -> tuple[float, float | None]:
    entry = ZOO[arch]
    model = FaceModel(_network(arch, entry.preprocessing.embedding_size), entry.preprocessing, arch,
                      entry.differentiable).eval()
    x = torch.rand(batch, 3, 112, 112)

    def forward():
        with torch.no_grad():
            model(x)

    fwd = _rate(forward, batch, repeats)
    if not entry.differentiable:
        return fwd, None
    for p in model.parameters():
        p.requires_grad_(False)

    def forward_backward():
        xg = x.clone().requires_grad_(True)
        torch.autograd.grad(model(xg).sum(), xg)

    return fwd, _rate(forward_backward, batch, repeats)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--archs", nargs="*", default=[a for a in ZOO if a != "onnx"])
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("zoo_throughput.md"))
    args = ap.parse_args(argv)
    rows = []
    for arch in args.archs:
        try:
            fwd, grad = measure(arch, args.batch, args.repeats)
            rows.append(f"| {arch} | {fwd:.1f} | {'-' if grad is None else f'{grad:.1f}'} |")
        except Exception as err:  # noqa: BLE001 - a missing extra or weights file is reported, not fatal
            rows.append(f"| {arch} | skipped: {type(err).__name__}: {str(err).splitlines()[0][:80]} | |")
        print(rows[-1], flush=True)
    header = (f"# Zoo throughput (embeddings/s, batch {args.batch}, CPU)\n\n"
              f"- machine: {platform.machine()}, {torch.get_num_threads()} torch threads\n"
              f"- torch {torch.__version__}, python {platform.python_version()}\n"
              f"- command: `python {' '.join(sys.argv)}`\n\n"
              "| arch | forward (emb/s) | forward + input gradient (emb/s) |\n|---|---|---|\n")
    args.out.write_text(header + "\n".join(rows) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
