"""Throughput of ``opom protect``: photos/s and video frames/s, face detection included.

    python experiments/benchmarks/bench_cloak.py [--repeats 3] [--frames 24] [--out FILE.md]

Photos: obama.jpg (face_recognition 1.3.0 sdist, ``make test-assets``) resized to a few resolutions and saved as
JPEG (quality 92) and PNG; each file is protected ``--repeats`` times (choose=largest, a random +-8 mask, so no
recognition model runs), timing the whole ``Protector.protect_photo``: read, MTCNN detection, warp-back and
blend, encoding (JPEG: until the mask survives) and the aligned-crop measurement. Video: a pan/zoom clip of the
same photo with an AAC tone (``opom.cloak.video.pan_zoom_clip``) at two sizes, protected with detection on every
frame, x264 preset medium, crf 12, yuv444p: both passes, encoding and the measurement included. Also records, for
the JPEG photos, the quality chosen and how much of the mask survived, and for the videos the retention of the
mask in the aligned face. Writes a Markdown report with the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from benchlib import cpu_name
from PIL import Image

from opom.cloak.mask import load_person_mask
from opom.cloak.protect import Protector, ProtectSettings
from opom.cloak.video import pan_zoom_clip, protect_video
from opom.data.prepare import default_detector
from opom.masks import MaskSet, save_masks

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
PHOTO_SIZES = ((640, 800), (910, 1137), (3000, 3750))  # about 0.5, 1 and 11 megapixels
VIDEO_SIZES = ((640, 360), (1280, 720))
NOTES = """Reading the numbers: MTCNN detection on the CPU is most of a photo's time; warp-back, blend and
encoding add the rest (JPEG: one encode + decode per quality tried). The timings move with the load of the
shared cores (see the load average), so compare rows of one run, not runs. "aligned max change" is the largest
change, in grey levels, in the aligned crop of the written file: eps 8 plus one for lossless files, plus the
re-encoding noise for JPEG and H.264 (which also changes pixels outside the faces). "retention" is the cosine of
that change with the intended (feathered) mask: below 1 because the mask is resampled twice (onto the photo and
back into the crop), and for videos also through YUV and the codec. Videos detect on every frame by default;
`--detect-every 3` detects on every third frame (landmarks in between interpolated)."""


def obama() -> np.ndarray:
    from real_photos import PhotosUnavailable, load_fr_photo

    try:
        return load_fr_photo("obama")
    except PhotosUnavailable as err:
        sys.exit(str(err))


def random_mask(path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    masks = (torch.randint(0, 2, (1, 3, 112, 112), generator=g).float() * 2 - 1) * 8 / 255
    save_masks(path, MaskSet(masks, ["bench"], "random", "random_noise", "none", 8.0))
    return path


def machine() -> str:
    cpu = cpu_name()
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    return (f"- machine: {platform.machine()}, {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
            f"torch {torch.__version__}, no GPU used\n- load average when started: {load} (other jobs share the "
            "cores)")


def bench_photos(prot: Protector, rgb: np.ndarray, tmp: Path, repeats: int) -> list[str]:
    rows = []
    for w, h in PHOTO_SIZES:
        img = Image.fromarray(rgb).resize((w, h), Image.LANCZOS)
        for fmt, suffix in (("JPEG", "jpg"), ("PNG", "png")):
            src = tmp / f"p{w}x{h}.{suffix}"
            img.save(src, fmt, **({"quality": 92} if fmt == "JPEG" else {}))
            times, detect, entry = [], [], None
            for r in range(repeats):
                start = time.perf_counter()
                entry = prot.protect_photo(src, tmp / f"out{r}_{w}.{suffix}")
                times.append(time.perf_counter() - start)
                assert entry["outcome"] == "protected", entry
                detect.append(entry["detect_s"])
            detect_s = float(np.median(detect))
            face = entry["protected_faces"][0]
            quality = f"q{entry['quality']}, survival {entry['survival']:.3f}" if fmt == "JPEG" else "lossless"
            rows.append(f"| {w}x{h} ({w * h / 1e6:.1f} MP) | {fmt} | {repeats} | {np.median(times):.2f} | "
                        f"{1 / np.median(times):.2f} | {detect_s:.2f} | {quality} | "
                        f"{face['aligned_max_change']} | {face['retention']:.3f} |")
            print(rows[-1], flush=True)
    return rows


def bench_video(prot: Protector, rgb: np.ndarray, tmp: Path, frames: int) -> list[str]:
    rows = []
    for w, h in VIDEO_SIZES:
        clip = pan_zoom_clip(rgb, tmp / f"clip{w}.mp4", frames=frames, size=(w, h), fps=24, centre=(0.5, 0.25),
                             span=0.9)
        start = time.perf_counter()
        entry = protect_video(prot, clip, tmp / f"out{w}.mp4", progress=False)
        wall = time.perf_counter() - start
        assert entry["outcome"] == "protected", entry
        jit = entry["landmark_jitter_px"]
        rows.append(f"| {w}x{h} | {frames} | {wall:.1f} | {frames / wall:.2f} | {entry['aligned_max_change']} | "
                    f"{entry['retention']:.3f} | {jit['detected']:.2f} -> {jit['smoothed']:.2f} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rgb = obama()
    header = machine()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        person = load_person_mask(random_mask(tmp / "mask.safetensors"))
        prot = Protector(person, ProtectSettings(choose="largest"), detector=default_detector())
        photo_rows = bench_photos(prot, rgb, tmp, args.repeats)
        video_rows = bench_video(prot, rgb, tmp, args.frames)
    command = "python experiments/benchmarks/bench_cloak.py" + (f" --out {args.out}" if args.out else "")
    text = "\n".join([
        "# opom protect throughput (CPU, face detection included)", "", header, f"- command: `{command}`",
        "- photos: obama.jpg resized, saved as JPEG q92 and PNG; choose=largest, a random +-8 mask (no recognition "
        "model); the whole `protect_photo` per file (read, MTCNN at max_side 1024, warp-back and blend, encode, "
        "aligned-crop check)", "",
        "| size | format | runs | median s/photo | photos/s | of which detection (median s) | encoding "
        "| aligned max change | retention |", "|---|---|---:|---:|---:|---:|---|---:|---:|", *photo_rows, "",
        f"- videos: a {args.frames}-frame pan/zoom clip of the same photo with an AAC tone; detection every frame, "
        "landmark smoothing sigma 1.5 frames, libx264 preset medium crf 12 yuv444p, audio copied; wall time of "
        "both passes and the measurement", "",
        "| size | frames | wall s | frames/s | aligned max change | retention | landmark jitter px (detected -> "
        "smoothed) |", "|---|---:|---:|---:|---:|---:|---|", *video_rows, "", NOTES,
    ])
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
