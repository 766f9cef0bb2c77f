"""The cloak tool as a user meets it: start-up apart from per-photo cost, detectors, videos, and what protects.

    python experiments/benchmarks/bench_cloak.py [--repeats 3] [--frames 24] [--out FILE.md]

Photos: obama.jpg, obama2.jpg, obama3.jpg, biden.jpg (face_recognition 1.3.0 sdist, ``make test-assets``).

1. Start-up: a fresh Python process per measurement; the time from launching it until it is ready for the first
   photo (imports, mask, detector, recognition models), median of ``--repeats``; and the whole ``opom protect``
   command on 1 and on 24 photos, so that start-up + 24 x per-photo can be checked against the wall time.
2. Per photo, steady state (in one process, models loaded once): 24 JPEGs of 0.7-1.1 MP, ``--choose match`` with a
   real enrolled mask: read, detect, match, warp-back and blend, encode until the mask survives, measure.
3. Sizes and formats (0.5, 1, 11 MP; JPEG and PNG), as in earlier versions of this report.
4. Detectors on the real photos: YuNet (boxes) + MTCNN's O-Net (landmarks), the default, against the full MTCNN:
   time per photo and landmark agreement in aligned-crop pixels.
5. Videos: frames/s after start-up, a pan/zoom clip at two sizes.
6. ``opom enroll`` and ``opom check``: whole commands (subprocess), wall time.
7. What protects: leave-one-out on the three Obama photos (enrol on two, protect the third, check it against the
   two), against the surrogate SFace and the black box dlib; and, for comparison, the enrolment photos themselves.
8. What JPEG re-encoding costs: the largest change outside the faces and the size against the original.

The load average is recorded before and after: the cores are shared, and timings move with the load.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchlib import cpu_name
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
PHOTO_SIZES = ((640, 800), (910, 1137), (3000, 3750))  # about 0.5, 1 and 11 megapixels
VIDEO_SIZES = ((640, 360), (1280, 720))
NAMES = ("obama", "obama2", "obama3", "biden")
OPOM = [sys.executable, "-m", "opom.cloak.cli"]


def load(name: str) -> np.ndarray:
    from real_photos import PhotosUnavailable, load_fr_photo

    try:
        return load_fr_photo(name)
    except PhotosUnavailable as err:
        sys.exit(str(err))


def loadavg() -> str:
    return " / ".join(f"{v:.1f}" for v in os.getloadavg())


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}


def ready_time(code: str, repeats: int) -> tuple[float, str]:
    """Median seconds from launching ``python -c code`` until it prints its ready line; and that line."""
    times, line = [], ""
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env())
        line = proc.stdout.readline().strip()
        times.append(time.perf_counter() - start)
        proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"the start-up probe failed (exit {proc.returncode}): {code}")
    return float(np.median(times)), line


def wall(cmd: list[str], cwd: Path | None = None) -> tuple[float, int, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env(), cwd=cwd)
    return time.perf_counter() - start, proc.returncode, proc.stdout + proc.stderr


HEAVY = "[m for m in ('torch', 'lightning', 'facenet_pytorch', 'hydra', 'av') if m in sys.modules]"


def startup(mask: Path, repeats: int) -> list[str]:
    probes = {
        "python itself (`python -c pass`)": "print('ready')",
        "import torch (for comparison)": "import torch; print('ready')",
        "opom protect: CLI imports, mask, YuNet + O-Net detector, SFace matcher":
            "import sys; from opom.cloak import cli; from opom.cloak.mask import load_person_mask; "
            "from opom.cloak.protect import Protector, ProtectSettings; "
            f"p = Protector(load_person_mask({str(mask)!r}), ProtectSettings()); p.matcher; print({HEAVY})",
        "opom protect --detector mtcnn --choose largest": "import sys; from opom.cloak import cli; "
            "from opom.cloak.mask import load_person_mask; from opom.cloak.faces import DetectSettings; "
            "from opom.cloak.protect import Protector, ProtectSettings; "
            f"p = Protector(load_person_mask({str(mask)!r}), ProtectSettings(choose='largest', "
            f"detect=DetectSettings(detector='mtcnn'))); print({HEAVY})",
        "opom check --panel sface: detector, SFace": "import sys; from opom.cloak import cli; "
            "from opom.cloak.check import build_panel; from opom.cloak.faces import DetectSettings; "
            f"DetectSettings().build(); build_panel(['sface']); print({HEAVY})",
        "opom check (sface, dlib): detector, SFace, dlib (dlib itself, no torch)": "import sys; "
            "from opom.cloak import cli; from opom.cloak.check import build_panel; "
            "from opom.cloak.faces import DetectSettings; DetectSettings().build(); "
            f"build_panel(['sface', 'dlib']); print({HEAVY})",
        "opom enroll, until the first photo is read: CLI imports, detector": "import sys; from opom.cloak import cli; "
            "from opom.cloak.enroll import EnrollSettings; EnrollSettings().detect.build(); print(" + HEAVY + ")",
        "opom enroll, then the crafting stack: torch, Lightning, the default preset's surrogates": "import sys; "
            "from opom.cloak.enroll import EnrollSettings, build_surrogates, surrogate_specs; "
            "from opom.data.alignment import CANVASES; import lightning, opom.module; "
            "s = EnrollSettings().validate(); build_surrogates(surrogate_specs(s), CANVASES[s.canvas]); "
            "print(" + HEAVY + ")",
    }
    rows = []
    for what, code in probes.items():
        seconds, line = ready_time(code, repeats)
        rows.append(f"| {what} | {seconds:.2f} | {line if line != 'ready' else '-'} |")
        print(rows[-1], flush=True)
    return rows


def make_photos(folder: Path, count: int = 24) -> list[Path]:
    """``count`` JPEGs (q92) of 0.7-1.1 MP: the four real photos at six sizes."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(count):
        rgb = load(NAMES[k % 4])
        mp = 0.7 + 0.4 * (k // 4) / 5
        f = (mp * 1e6 / (rgb.shape[0] * rgb.shape[1])) ** 0.5
        img = Image.fromarray(rgb).resize((round(rgb.shape[1] * f), round(rgb.shape[0] * f)), Image.LANCZOS)
        path = folder / f"{NAMES[k % 4]}_{k:02d}.jpg"
        img.save(path, quality=92)
        out.append(path)
    return out


def per_photo(mask: Path, photos: list[Path], tmp: Path) -> tuple[list[str], float]:
    from opom.cloak.mask import load_person_mask
    from opom.cloak.protect import Protector, ProtectSettings

    prot = Protector(load_person_mask(mask), ProtectSettings())
    _ = prot.matcher  # built now, not during the first photo
    prot.protect_photo(photos[0], tmp / "warm.jpg")  # first-call costs (allocations, O-Net) out of the way
    entries, times = [], []
    for p in photos:
        start = time.perf_counter()
        entries.append(prot.protect_photo(p, tmp / f"pp_{p.name}"))
        times.append(time.perf_counter() - start)
    outcomes = {}
    for e in entries:
        outcomes[e["outcome"]] = outcomes.get(e["outcome"], 0) + 1
    detect = [e["detect_s"] for e in entries if "detect_s" in e]
    encodings = {}
    for e in entries:
        if e.get("encoding"):
            encodings[e["encoding"]] = encodings.get(e["encoding"], 0) + 1
    med = float(np.median(times))
    rows = [f"| {len(photos)} | {med:.3f} | {np.mean(times):.3f} | {np.percentile(times, 90):.3f} | "
            f"{np.median(detect):.3f} | {', '.join(f'{k} {v}' for k, v in sorted(encodings.items()))} | "
            f"{', '.join(f'{k} {v}' for k, v in sorted(outcomes.items()))} |"]
    print(rows[-1], flush=True)
    return rows, med


def cli_runs(mask: Path, photos: list[Path], tmp: Path) -> list[str]:
    rows = []
    for n in (1, len(photos)):
        folder = tmp / f"cli{n}"
        folder.mkdir()
        for p in photos[:n]:
            (folder / p.name).write_bytes(p.read_bytes())
        seconds, rc, out = wall([*OPOM, "protect", str(folder), "--mask", str(mask), "--out", str(tmp / f"o{n}"),
                                 "--no-progress"])
        rows.append((n, seconds, rc))
        print(f"opom protect {n} photo(s): {seconds:.2f} s (exit {rc})", flush=True)
    return rows


def sizes(mask: Path, tmp: Path, repeats: int) -> list[str]:
    from opom.cloak.mask import load_person_mask
    from opom.cloak.protect import Protector, ProtectSettings

    prot = Protector(load_person_mask(mask), ProtectSettings())
    rgb = load("obama")
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
            face = entry["protected_faces"][0]
            enc = f"{entry['encoding']}, survival {entry['survival']:.3f}" if fmt == "JPEG" else "lossless"
            rows.append(f"| {w}x{h} ({w * h / 1e6:.1f} MP) | {fmt} | {repeats} | {np.median(times):.3f} | "
                        f"{np.median(detect):.3f} | {enc} | {face['aligned_max_change']} | {face['retention']:.3f} |")
            print(rows[-1], flush=True)
    return rows


def detectors() -> list[str]:
    from opom.data.alignment import similarity_transform, transform_points
    from opom.data.detectors import build_detector
    from opom.data.photos import detection_view, to_full_resolution
    from opom.masks import ARCFACE_TEMPLATE_112

    built = {name: build_detector(name) for name in ("yunet", "mtcnn")}
    rows = []
    for name in NAMES:
        rgb = load(name)
        small, scale = detection_view(rgb, 1024)
        found, seconds = {}, {}
        for det_name, det in built.items():
            det.detect(small)
            times = []
            for _ in range(3):
                start = time.perf_counter()
                boxes, _, lms = det.detect(small)
                times.append(time.perf_counter() - start)
            k = int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
            found[det_name], seconds[det_name] = to_full_resolution(lms[k], scale), float(np.median(times))
        m = similarity_transform(found["mtcnn"], np.asarray(ARCFACE_TEMPLATE_112))
        dist = np.linalg.norm(transform_points(m, found["yunet"]) - transform_points(m, found["mtcnn"]), axis=1)
        rows.append(f"| {name}.jpg | {rgb.shape[1]}x{rgb.shape[0]} | {seconds['yunet']:.3f} | "
                    f"{seconds['mtcnn']:.3f} | {dist.mean():.2f} | {dist.max():.2f} |")
        print(rows[-1], flush=True)
    return rows


def videos(mask: Path, tmp: Path, frames: int) -> list[str]:
    from opom.cloak.mask import load_person_mask
    from opom.cloak.protect import Protector, ProtectSettings
    from opom.cloak.video import pan_zoom_clip, protect_video

    start = time.perf_counter()
    prot = Protector(load_person_mask(mask), ProtectSettings())
    _ = prot.matcher  # built now, not during the first photo
    ready = time.perf_counter() - start
    rgb = load("obama")
    rows = []
    for w, h in VIDEO_SIZES:
        clip = pan_zoom_clip(rgb, tmp / f"clip{w}.mp4", frames=frames, size=(w, h), fps=24, centre=(0.5, 0.25),
                             span=0.9)
        start = time.perf_counter()
        entry = protect_video(prot, clip, tmp / f"out{w}.mp4", progress=False)
        seconds = time.perf_counter() - start
        assert entry["outcome"] == "protected", entry
        jit = entry["landmark_jitter_px"]
        rows.append(f"| {w}x{h} | {frames} | {ready:.2f} | {seconds:.1f} | {frames / seconds:.1f} | "
                    f"{entry['aligned_max_change']} | {entry['retention']:.3f} | {jit['detected']:.2f} -> "
                    f"{jit['smoothed']:.2f} |")
        print(rows[-1], flush=True)
    return rows


def loo(tmp: Path) -> tuple[list[str], list[str], Path]:
    """Leave-one-out on the Obama photos; returns table rows, the enrolment-photo rows, and one mask."""
    from opom.cloak.check import build_panel, check
    from opom.cloak.enroll import enroll
    from opom.cloak.protect import ProtectSettings, protect

    folder = tmp / "obama"
    folder.mkdir()
    for name in NAMES[:3]:
        Image.fromarray(load(name)).save(folder / f"{name}.jpg", quality=95)
    panel = build_panel(["sface", "dlib"])
    rows, first_mask = [], None
    for held in NAMES[:3]:
        train = [folder / f"{n}.jpg" for n in NAMES[:3] if n != held]
        mask = tmp / f"without_{held}.safetensors"
        start = time.perf_counter()
        enroll(train, mask, name="obama", progress=False, quiet=True)
        enroll_s = time.perf_counter() - start
        first_mask = first_mask or mask
        cells = []
        for refine in (0, 20):  # the mask as it is, then refined on the photo (opom protect --refine 20)
            start = time.perf_counter()
            entries = protect([folder / f"{held}.jpg"], mask, out=tmp / f"loo_{held}_{refine}",
                              settings=ProtectSettings(refine=refine), progress=False, quiet=True)
            protect_s = time.perf_counter() - start
            (entry,) = [e for e in entries if e["outcome"] == "protected"]
            res = check(train, protected=[entry["output"]], originals=[folder / f"{held}.jpg"], panel=panel,
                        quiet=True)
            for model in ("sface", "dlib"):
                (r,) = [r for r in res.rows if r["model"] == model]
                cells.append(f"{r['clean_score']:.3f} -> {r['protected_score']:.3f} ({r['verdict']})")
        rows.append(f"| {held}.jpg | {', '.join(p.name for p in train)} | {enroll_s:.0f} | {' | '.join(cells)} | "
                    f"{protect_s:.0f} |")
        print(rows[-1], flush=True)
    # the mask on its own enrolment photos (what the README reported before)
    seen = tmp / "all3.safetensors"
    enroll([folder], seen, name="obama", progress=False, quiet=True)
    protect([folder], seen, out=tmp / "seen", settings=ProtectSettings(), progress=False, quiet=True)
    res = check([folder], report=tmp / "seen" / "opom_protect_report.jsonl", panel=panel, quiet=True)
    seen_rows = []
    for name in NAMES[:3]:
        cells = []
        for model in ("sface", "dlib"):
            (r,) = [r for r in res.rows if r["model"] == model and Path(r["photo"]).name == f"{name}.jpg"]
            cells.append(f"{r['clean_score']:.3f} -> {r['protected_score']:.3f} ({r['verdict']})")
        seen_rows.append(f"| {name}.jpg | {cells[0]} | {cells[1]} |")
    return rows, seen_rows, first_mask


def jpeg_cost(tmp: Path) -> list[str]:
    """The largest change outside the protected faces, and the file size against the original, for the real JPEGs
    as they are (camera files)."""
    from real_photos import _fr_source, _read_from

    from opom.cloak import photofile as pf
    from opom.cloak.blend import footprint_box

    src_dir = tmp / "camera"
    src_dir.mkdir()
    for name in NAMES:
        (src_dir / f"{name}.jpg").write_bytes(_read_from(_fr_source(), f"{name}.jpg"))
    rows = []
    mask = tmp / "random.safetensors"
    from test_cloak import make_mask

    make_mask(mask)
    from opom.cloak.mask import load_person_mask
    from opom.cloak.protect import Protector, ProtectSettings

    prot = Protector(load_person_mask(mask), ProtectSettings(choose="largest"))
    for name in NAMES:
        src = src_dir / f"{name}.jpg"
        entry = prot.protect_photo(src, tmp / f"cost_{name}.jpg")
        a, b = pf.load_stored(src).display_rgb8(), pf.load_stored(tmp / f"cost_{name}.jpg").display_rgb8()
        outside = np.ones(a.shape[:2], bool)
        y0, y1, x0, x1 = footprint_box(entry["protected_faces"][0]["transform"], (112, 112), a.shape[:2])
        outside[y0:y1, x0:x1] = False
        diff = np.abs(a.astype(int) - b.astype(int))[outside]
        orig = pf.load_stored(src)
        rows.append(f"| {name}.jpg | {'4:4:4' if orig.jpeg_subsampling == 0 else '4:2:0/4:2:2'} | "
                    f"{entry['encoding']} | {diff.max()} | {np.percentile(diff, 99.9):.0f} | "
                    f"{(diff > 0).mean() * 100:.0f} % | {src.stat().st_size / 1e3:.0f} kB -> "
                    f"{entry['bytes'] / 1e3:.0f} kB ({100 * (entry['bytes'] / src.stat().st_size - 1):+.0f} %) |")
        print(rows[-1], flush=True)
    return rows


def whole_commands(tmp: Path, mask: Path) -> list[str]:
    folder = tmp / "obama"
    rows = []
    seconds, rc, _ = wall([*OPOM, "enroll", str(folder), "--out", str(tmp / "cli.safetensors"), "--no-progress"])
    rows.append(f"| `opom enroll` 3 photos (default preset, colour + luminance masks) | {seconds:.1f} | "
                f"{rc} |")
    seconds, rc, _ = wall([*OPOM, "protect", str(folder), "--mask", str(mask), "--out", str(tmp / "cmd"),
                           "--no-progress"])
    rows.append(f"| `opom protect` 3 photos | {seconds:.1f} | {rc} |")
    report = tmp / "cmd" / "opom_protect_report.jsonl"
    for panel in ("sface", "sface,dlib"):
        seconds, rc, _ = wall([*OPOM, "check", str(folder), "--report", str(report), "--panel", panel])
        rows.append(f"| `opom check --panel {panel}` 3 photos | {seconds:.1f} | {rc} (1: some photo not protected) |")
    for row in rows:
        print(row, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    load_start = loadavg()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        loo_rows, seen_rows, mask = loo(tmp)
        start_rows = startup(mask, args.repeats)
        photos = make_photos(tmp / "photos")
        pp_rows, med = per_photo(mask, photos, tmp)
        cli = cli_runs(mask, photos, tmp)
        size_rows = sizes(mask, tmp, args.repeats)
        det_rows = detectors()
        video_rows = videos(mask, tmp, args.frames)
        cmd_rows = whole_commands(tmp, mask)
        cost_rows = jpeg_cost(tmp)
    load_end = loadavg()
    (n1, w1, _), (n24, w24, _) = cli
    derived = w1 - med
    command = "python experiments/benchmarks/bench_cloak.py" + (f" --out {args.out}" if args.out else "")
    text = "\n".join([
        "# opom cloak: start-up, per-photo cost, detectors, videos, and what protects", "",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores ({cpu_name()}), Python "
        f"{platform.python_version()}, no GPU used",
        f"- load average (1 / 5 / 15 min) at the start: {load_start}; at the end: {load_end} (other jobs share the "
        "cores: the timings move with the load)",
        f"- command: `{command}` ({(time.perf_counter() - began) / 60:.0f} min)", "",
        f"**opom protect: start-up {derived:.2f} s (1 photo: {w1:.2f} s wall), then {med:.3f} s per 0.7-1.1 MP "
        f"photo with detection and matching; {n24} photos: {w24:.2f} s wall**", "",
        "## Start-up", "",
        "A fresh process, launched until it is ready for the first photo (median of "
        f"{args.repeats}); the last column lists the heavy modules it imported.", "",
        "| what | s | heavy modules imported |", "|---|---:|---|", *start_rows, "",
        f"The whole command, `opom protect FOLDER --mask M --out O` (choose match): {n1} photo {w1:.2f} s, {n24} "
        f"photos {w24:.2f} s wall; start-up + {n24} x per-photo = {derived:.2f} + {n24} x {med:.3f} = "
        f"{derived + n24 * med:.2f} s.", "",
        "## Per photo, steady state", "",
        "One process, models loaded once; 24 JPEGs (q92) of 0.7-1.1 MP made from the four real photos; "
        "`--choose match` with a mask enrolled on obama2 and obama3 (so Biden's photos are `no_match`).", "",
        "| photos | median s | mean s | 90th pct s | of which detection + matching (median s) | encodings kept | "
        "outcomes |", "|---:|---:|---:|---:|---:|---|---|", *pp_rows, "",
        "## Sizes and formats", "",
        "| size | format | runs | median s/photo | detection + matching (s) | encoding | aligned max change | "
        "retention |", "|---|---|---:|---:|---:|---|---:|---:|", *size_rows, "",
        "## Detectors", "",
        "Detection time per photo at the detection size (longer side 1024) and the landmark agreement of the default "
        "(YuNet's box, MTCNN's O-Net points) with the full MTCNN, in pixels of the aligned 112x112 crop.", "",
        "| photo | size | yunet + O-Net s | mtcnn s | agreement mean (crop px) | max |",
        "|---|---|---:|---:|---:|---:|", *det_rows, "",
        "## Videos", "",
        f"A {args.frames}-frame pan/zoom clip of obama.jpg with an AAC tone; detection every frame, landmark "
        "smoothing sigma 1.5, libx264 preset medium crf 12 yuv444p, audio copied. Start-up (mask, detector, "
        "matcher) apart; frames/s over both passes and the measurement.", "",
        "| size | frames | start-up s | wall s | frames/s | aligned max change | retention | landmark jitter px "
        "(detected -> smoothed) |", "|---|---:|---:|---:|---:|---:|---:|---|", *video_rows, "",
        "## Whole commands", "",
        "| command | wall s | exit |", "|---|---:|---|", *cmd_rows, "",
        "## What protects: photos the mask never saw", "",
        "Leave-one-out: the mask is enrolled (default preset) on two Obama photos, the third is protected — with "
        "the mask as it is, and refined on the photo (`--refine 20`) — and checked against the two (score of the "
        "clean original -> the protected copy; SFace: cosine, same person at >= 0.363; dlib: L2 distance, same at "
        "< 0.6).", "",
        "| protected photo | enrolled on | enroll s | SFace (surrogate), mask | dlib (black box), mask | SFace, "
        "refined | dlib, refined | protect --refine 20 s |",
        "|---|---|---:|---|---|---|---|---:|", *loo_rows, "",
        "For comparison, a mask enrolled on all three and checked on those same three photos (what a mask does on "
        "the photos it was made from; not a fair measure of protection):", "",
        "| photo | SFace | dlib |", "|---|---|---|", *seen_rows, "",
        "## What JPEG re-encoding costs", "",
        "The camera JPEGs as they are, protected (largest face, a random +-8 mask): the change OUTSIDE the face "
        "region (which a lossless format leaves bit-identical), and the size.", "",
        "| photo | original chroma | encoding kept | max change outside the face (grey levels) | 99.9th pct | pixels "
        "changed | size |", "|---|---|---|---:|---:|---:|---|", *cost_rows, "",
        "Reading the numbers: start-up is imports plus loading the detector (YuNet and O-Net through OpenCV) and "
        "SFace (OpenCV's dnn), without torch; torch's own import is in the start-up table for comparison: enroll "
        "needs it (crafting is gradient-based); check needs it only for panel models other than SFace and dlib. "
        "Per photo, detection and "
        "matching are about half; JPEG encoding (one encode and decode per quality tried) and the aligned-crop "
        "checks the rest. \"aligned max change\" is the largest change, in grey levels, inside the face's aligned "
        "crop of the written file (eps 8 plus rounding, plus JPEG noise); \"retention\" the cosine of that change "
        "with the intended mask.",
    ])
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
