"""Photos per second of ``opom.data.prepare`` (read, MTCNN on CPU, align, write) on the real offline photos.

    python experiments/benchmarks/bench_prepare.py [--copies 3] [--workers 1 2] [--out FILE.md]

The 7 real photos (skimage astronaut; obama, obama2, obama3, biden from the face_recognition 1.3.0 sdist; the
insightface group photo t1.jpg and the aligned Tom Hanks crop, ``make test-assets``) are copied ``--copies`` times
(21 inputs by default) into a temporary tree. Each worker count runs on a fresh output folder: the wall time includes
starting the detector (and the worker processes), so it is what a user waits. Writes a Markdown report with the
machine, the load average when it ran and the command.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

import torch
from PIL import Image

from opom.data.prepare import prepare

CACHE = Path(os.path.expanduser("~/.cache/opom-test-photos"))


def build_tree(root: Path, copies: int) -> int:
    sdist, wheel = CACHE / "face_recognition-1.3.0.tar.gz", CACHE / "insightface-2.1-py3-none-any.whl"
    if not sdist.is_file() or not wheel.is_file():
        sys.exit(f"the real photos are missing in {CACHE}: run make test-assets")
    from skimage import data

    photos: dict[str, tuple[str, bytes]] = {}
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            for name in ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg"):
                if member.name.endswith(f"tests/test_images/{name}"):
                    photos[name] = ("obama" if name.startswith("obama") else "biden", tar.extractfile(member).read())
    with zipfile.ZipFile(wheel) as zf:
        photos["t1.jpg"] = ("group", zf.read("insightface/data/images/t1.jpg"))
        photos["hanks.png"] = ("hanks", zf.read("insightface/data/images/Tom_Hanks_54745.png"))
    n = 0
    for copy in range(copies):
        folder = root / "astronaut"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(data.astronaut()).save(folder / f"astronaut_{copy}.png")
        n += 1
        for name, (identity, blob) in photos.items():
            (root / identity).mkdir(parents=True, exist_ok=True)
            stem, suffix = name.rsplit(".", 1)
            (root / identity / f"{stem}_{copy}.{suffix}").write_bytes(blob)
            n += 1
    return n


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("prepare_throughput.md"))
    args = ap.parse_args(argv)
    rows = []
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        n = build_tree(Path(tmp) / "in", args.copies)
        for workers in args.workers:
            t = time.perf_counter()
            m = prepare(Path(tmp) / "in", Path(tmp) / f"out{workers}", workers=workers, progress=False, quiet=True)
            wall = time.perf_counter() - t
            busy = sum(e.get("time_s", 0.0) for e in m.entries.values())
            counts = ", ".join(f"{k} {v}" for k, v in m.counts().items())
            rows.append((workers, n, wall, n / wall, n / busy if busy else float("nan"), counts))
            print(f"workers {workers}: {n} photos in {wall:.1f} s = {n / wall:.2f} photos/s ({counts})")
        t = time.perf_counter()
        again = prepare(Path(tmp) / "in", Path(tmp) / f"out{args.workers[0]}", progress=False, quiet=True)
        rerun = time.perf_counter() - t
        assert again.processed == 0
    command = "python experiments/benchmarks/bench_prepare.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# prepare throughput (MTCNN on CPU, real photos)", "",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores ({cpu_name()}), Python {platform.python_version()},"
        f" torch {torch.__version__}, no GPU used",
        f"- load average when started: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (other jobs share the cores)",
        f"- command: `{command.strip()}`",
        f"- input: {n} files = the 7 offline photos x {args.copies} (one is the aligned Tom Hanks crop, copied "
        "without detection; t1.jpg is a 6-face group photo), default settings (choose=largest, max_side=1024)",
        "",
        "| workers | photos | wall s (incl. start-up) | photos/s (wall) | photos/s per busy worker | outcomes |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    lines += [f"| {w} | {k} | {wall:.1f} | {rate:.2f} | {busy:.2f} | {counts} |"
              for w, k, wall, rate, busy, counts in rows]
    lines += ["", f"A second run over the same output (nothing to do, idempotent) took {rerun:.2f} s.", "",
              "Start-up is paid once per run: about a second in-process, several seconds per worker process (each",
              "imports torch and builds its own MTCNN), so a pool only pays off for batches of dozens of photos.", ""]
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
