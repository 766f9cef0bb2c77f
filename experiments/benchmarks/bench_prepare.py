"""``opom-prepare`` on the real offline photos: start-up apart from the cost per photo, for each detector.

    python experiments/benchmarks/bench_prepare.py [--copies 3] [--workers 1 2] [--out FILE.md]

The 7 real photos (skimage astronaut; obama, obama2, obama3, biden from the face_recognition 1.3.0 sdist; the
insightface group photo t1.jpg and the aligned Tom Hanks crop, ``make test-assets``) are copied ``--copies`` times
(21 inputs by default) into a temporary tree. For each detector (yunet, the default; mtcnn) and worker count, a fresh
output folder: the wall time is what a user waits; the per-photo cost is the median of the manifest's ``time_s``
(read, detect, align; in the worker), and start-up is the wall time less the photos' share of it (building the
detector in-process, or spawning the workers). Writes a Markdown report with the machine, the load average before
and after, and the command.
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
    import numpy as np

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--detectors", nargs="*", default=["yunet", "mtcnn"])
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("prepare_throughput.md"))
    args = ap.parse_args(argv)
    rows = []
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        n = build_tree(Path(tmp) / "in", args.copies)
        for detector in args.detectors:
            for workers in args.workers:
                out = Path(tmp) / f"out_{detector}_{workers}"
                t = time.perf_counter()
                m = prepare(Path(tmp) / "in", out, workers=workers, progress=False, quiet=True, detector=detector)
                wall = time.perf_counter() - t
                each = [e.get("time_s", 0.0) for e in m.entries.values()]
                per_photo = float(np.median(each))
                startup = wall - sum(each) / workers
                counts = ", ".join(f"{k} {v}" for k, v in m.counts().items())
                rows.append((detector, workers, n, wall, startup, per_photo, n / wall, counts))
                print(f"{detector}, workers {workers}: {n} photos in {wall:.1f} s, start-up ~{startup:.1f} s, "
                      f"{per_photo:.3f} s/photo ({counts})", flush=True)
        t = time.perf_counter()
        again = prepare(Path(tmp) / "in", Path(tmp) / f"out_{args.detectors[0]}_{args.workers[0]}", progress=False,
                        quiet=True, detector=args.detectors[0])
        rerun = time.perf_counter() - t
        assert again.processed == 0
    end = os.getloadavg()
    command = "python experiments/benchmarks/bench_prepare.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# prepare throughput (CPU, real photos)", "",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores ({cpu_name()}), Python {platform.python_version()},"
        " no GPU used",
        f"- load average (1 / 5 / 15 min) at the start: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}; at the end: "
        f"{end[0]:.1f} / {end[1]:.1f} / {end[2]:.1f} (other jobs share the cores)",
        f"- command: `{command.strip()}`",
        f"- input: {n} files = the 7 offline photos x {args.copies} (one is the aligned Tom Hanks crop, copied "
        "without detection; t1.jpg is a 6-face group photo), default settings (choose=largest, max_side=1024)",
        "",
        "| detector | workers | photos | wall s | start-up s (wall less the photos' share) | s per photo (median, "
        "in the worker) | photos/s (wall) | outcomes |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    lines += [f"| {d} | {w} | {k} | {wall:.1f} | {startup:.1f} | {pp:.3f} | {rate:.2f} | {counts} |"
              for d, w, k, wall, startup, pp, rate, counts in rows]
    lines += ["", f"A second run over the same output (nothing to do, idempotent) took {rerun:.2f} s.", "",
              "yunet is OpenCV's YuNet for the boxes and MTCNN's O-Net for the landmarks, both through OpenCV's dnn "
              "module (no torch); mtcnn is facenet-pytorch's MTCNN (torch). Start-up is paid once per run: building "
              "the detector in-process, or spawning each worker process (which imports and builds its own), so a "
              "pool only pays off for batches of dozens of photos.", ""]
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
