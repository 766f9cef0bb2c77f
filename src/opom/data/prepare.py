"""``prepare`` (``opom-prepare``): folders of real photos -> aligned face crops plus a manifest of everything.

Input: ``<input>/<identity>/<photos>`` (sub-folders of an identity are walked too), or a flat folder of photos (one
identity named after the folder). Output: ``<output>/<identity>/<stem>.png`` (``<stem>_<k>.png`` for
``choose="all"``) and ``<output>/manifest.jsonl``, one JSON line per input file and run, append-only:

- every input file gets an entry, whatever happens to it (see :data:`OUTCOMES`); originals are only ever read;
- a later entry for the same source supersedes earlier ones (:func:`load_manifest` keeps the latest);
- a re-run skips files whose entry has the same content (size + mtime, else sha256) and settings and a final
  outcome (all but ``error``) and whose crops still exist: re-running does no work, and an interrupted run resumes;
- crops are written atomically (temp file + ``os.replace``) before their entry is appended and flushed;
- which files are photos is the one input policy of every command (:mod:`opom.data.inputs`): formats, modes,
  the pixel limit (``max_pixels``), hidden files, links leading outside the input (recorded as ``ignored`` with
  nothing about their target) and videos are decided there, and each such file gets an entry with its reason;
- faces are found by YuNet (default; no torch) or MTCNN (``detector``), see :mod:`opom.data.detectors`.

Source coordinates (boxes, landmarks, transforms) refer to the upright photo, after its EXIF orientation
(see :mod:`opom.data.photos`). The 2x3 ``transform`` maps those to crop pixels; invert it to paste back.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import multiprocessing
import os
import sys
import tempfile
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from opom import __version__
from opom.data.alignment import get_template, warp_to_template
from opom.data.detectors import DEFAULT_DETECTOR, MTCNNDetector, build_detector, detector_name
from opom.data.inputs import check_output_folder, is_video, link_reason, set_max_pixels
from opom.data.photos import PhotoError, detection_view, read_photo_bytes, to_full_resolution
from opom.errors import UserError
from opom.hashing import sha256_file

PREPARE_VERSION = 1
MANIFEST_NAME = "manifest.jsonl"
CHOICES = ("largest", "central", "all")
OK_OUTCOMES = ("ok", "multiple_faces", "already_aligned")
OUTCOMES = {
    "ok": "one face found (or all faces with choose='all'), aligned crop(s) written",
    "multiple_faces": "several faces found; `choose` picked one, its crop was written (all faces are listed)",
    "already_aligned": "already an aligned crop (template size, or --aligned): copied, not re-aligned",
    "no_face": "no face found with a score >= min_score",
    "too_small": "faces found, but all smaller than min_face_size (shorter box side, source pixels)",
    "not_an_image": "no decoder recognises the file (a text file named .jpg, an empty file, ...)",
    "unreadable": "a recognised image that cannot be decoded (truncated, corrupt, permission denied, ...)",
    "too_large": "over the pixel limit (--max-pixels, checked before decoding), or out of memory while decoding",
    "unsupported": "an image outside the input policy (palette, animated, 1-bit, ...) or a video; the reason names "
                   "the fix",
    "ignored": "a hidden file (name starting with '.'), or a link leading outside the input (not followed, nothing "
               "about its target recorded)",
    "error": "unexpected failure (a bug, or a crashed worker); retried on the next run",
}
RETRIED_OUTCOMES = ("error",)


@dataclass(frozen=True)
class PrepareSettings:
    """Everything that changes the crops: an entry made with other settings is redone."""

    choose: str = "largest"
    min_face_size: int = 32  # shorter side of the face box, in source pixels
    min_score: float | None = None  # the detector's face score; None: its own default (YuNet 0.6, MTCNN 0.9)
    max_side: int = 1024  # photos are downscaled to this longer side for detection (crops use full resolution)
    template: str = "arcface_112"
    aligned: bool = False  # every photo is an aligned crop already
    border: str = "constant"
    detector: str = DEFAULT_DETECTOR  # yunet | mtcnn
    max_pixels: int | None = None  # photos larger than this are too_large (None: the default limit)
    version: int = PREPARE_VERSION

    def validate(self) -> PrepareSettings:
        if self.choose not in CHOICES:
            raise UserError(f"choose must be one of {', '.join(CHOICES)}, got {self.choose!r}")
        if self.min_face_size < 0:
            raise UserError(f"min_face_size must be >= 0 pixels, got {self.min_face_size}")
        if self.min_score is not None and not 0 <= self.min_score <= 1:
            raise UserError(f"min_score must lie in [0, 1], got {self.min_score}")
        detector_name(self.detector)
        if self.max_side < 64:
            raise UserError(f"max_side must be at least 64 pixels, got {self.max_side}")
        if self.border not in ("constant", "replicate"):
            raise UserError(f"border must be 'constant' or 'replicate', got {self.border!r}")
        get_template(self.template)
        return self

    @property
    def score_threshold(self) -> float:
        from opom.data.detectors import MIN_SCORE

        return float(self.min_score) if self.min_score is not None else MIN_SCORE[self.detector]

    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class PhotoJob:
    """One input file: ``relpath`` (posix, relative to the input root) keys its manifest entries."""

    path: str
    relpath: str
    identity: str
    stem: str  # output name without suffix, unique per source within its identity folder unless claimed
    skip: tuple[str, str] | None = None  # (outcome, reason) decided from the path alone: nothing is read


@dataclass
class Manifest:
    """The latest manifest entry of every file of the input, and what this run did."""

    path: Path
    output_root: Path
    entries: dict[str, dict]
    processed: int = 0
    skipped: int = 0
    elapsed_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        counts = Counter(e["outcome"] for e in self.entries.values())
        return {k: counts[k] for k in OUTCOMES if counts[k]} | {k: v for k, v in counts.items() if k not in OUTCOMES}

    def by_outcome(self, *outcomes: str) -> list[dict]:
        return [e for e in self.entries.values() if e["outcome"] in outcomes]

    def ok(self) -> list[dict]:
        return self.by_outcome(*OK_OUTCOMES)

    def crops(self) -> list[Path]:
        return [self.output_root / c["path"] for e in self.ok() for c in e.get("crops", [])]

    def summary(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self.counts().items()) or "no files"
        rate = f", {self.processed / self.elapsed_s:.2f} photos/s" if self.processed and self.elapsed_s > 0 else ""
        lines = [f"prepare: {len(self.entries)} files -> {len(self.crops())} crops in {self.output_root}",
                 f"  outcomes: {counts}",
                 f"  processed {self.processed} now, {self.skipped} already done ({self.elapsed_s:.1f} s{rate})",
                 f"  manifest: {self.path}"]
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


# ------------------------------------------------------------------------------------------------ manifest


def load_manifest(path: str | Path) -> dict[str, dict]:
    """The latest entry per source ``relpath`` of a manifest; lines cut short by an interruption are skipped."""
    path = Path(path)
    latest: dict[str, dict] = {}
    if not path.exists():
        return latest
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict) and "relpath" in entry and "outcome" in entry:
                latest[entry["relpath"]] = entry
    return latest


def _open_for_append(path: Path):
    """Open the manifest for appending, first ending a line left unfinished by an interruption."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            unfinished = f.read(1) != b"\n"
        if unfinished:
            with open(path, "ab") as f:
                f.write(b"\n")
    return open(path, "a", encoding="utf-8")


# ------------------------------------------------------------------------------------------------ scanning


def scan_photos(input_root: str | Path, exclude: Path | None = None) -> tuple[list[PhotoJob], list[str]]:
    """Every file under ``<input>/<identity>/``, or of a flat folder (identity = folder name), sorted; and notes.

    Hidden folders are not walked (noted); hidden files are listed (they get an ``ignored`` entry).
    """
    root = Path(input_root).expanduser().resolve()
    if not root.is_dir():
        raise UserError(f"input folder {str(root)!r} does not exist (expected <input>/<identity>/<photos> "
                        "or a folder of photos)")
    notes: list[str] = []
    children = sorted(root.iterdir())
    if exclude is not None:
        children = [c for c in children if c.is_symlink() or c.resolve() != exclude]
    linked = [c for c in children if c.is_dir() and c.is_symlink()]  # listed as files: recorded, not followed
    folders = [c for c in children if c.is_dir() and not c.is_symlink() and not c.name.startswith(".")]
    files = [c for c in children if (c.is_file() or c.is_symlink()) and not (c.is_dir() and not c.is_symlink())]
    files = sorted(set(files) | set(linked))
    hidden = [c.name for c in children if c.is_dir() and not c.is_symlink() and c.name.startswith(".")]
    groups: list[tuple[str, Path, list[Path]]] = []
    if files:
        if folders:
            notes.append(f"{len(files)} files directly in {root} are treated as identity {root.name!r}")
        groups.append((root.name, root, files))
    for folder in folders:
        found = []
        for dirpath, dirnames, filenames in os.walk(folder):
            here = Path(dirpath)
            keep = []
            for d in sorted(dirnames):
                if (here / d).is_symlink():
                    found.append(here / d)  # a linked folder: recorded as ignored, not followed
                elif d.startswith(".") or (exclude is not None and (here / d).resolve() == exclude):
                    hidden.append(str((here / d).relative_to(root)))
                else:
                    keep.append(d)
            dirnames[:] = keep
            found += [here / n for n in sorted(filenames) if (here / n).is_file() or (here / n).is_symlink()]
        groups.append((folder.name, folder, found))
    if hidden:
        notes.append(f"not walked (hidden or the output folder): {', '.join(sorted(hidden)[:5])}"
                     + (" ..." if len(hidden) > 5 else ""))
    jobs = []
    for identity, folder, paths in groups:
        for path in sorted(paths):
            rel_in_identity = path.relative_to(folder)
            stem = "_".join(rel_in_identity.parent.parts + (rel_in_identity.stem or rel_in_identity.name,))
            why = link_reason(path, root)
            skip = ("ignored", why) if why else None
            if skip is None and is_video(path):
                skip = ("unsupported", "a video: prepare takes photos")
            jobs.append(PhotoJob(str(path), path.relative_to(root).as_posix(), identity, stem, skip))
    return jobs, notes


# ------------------------------------------------------------------------------------------------ detection


FaceDetector = MTCNNDetector  # facenet-pytorch's MTCNN (see opom.data.detectors)


def default_detector(device: str = "cpu"):
    """The default face detector (YuNet; MTCNN when the zoo extra is missing), see :mod:`opom.data.detectors`."""
    return build_detector(DEFAULT_DETECTOR, device)


def _choose(boxes: np.ndarray, image_size: tuple[int, int], how: str) -> list[int]:
    if how == "all":
        return list(range(len(boxes)))
    if how == "largest":
        return [int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))]
    w, h = image_size  # central: box centre nearest the photo centre
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)
    return [int(np.argmin(np.hypot(centres[:, 0] - w / 2, centres[:, 1] - h / 2)))]


def _r(values, digits: int):
    return np.round(np.asarray(values, dtype=np.float64), digits).tolist()


def process_photo(job: PhotoJob, settings: PrepareSettings, detector) -> dict:
    """Read, detect, choose and align one photo. Returns a manifest entry without output paths, plus the crops
    (``"_crops"``: a list of ``(name suffix, uint8 array, crop record)``) for the caller to write."""
    start = time.perf_counter()
    entry: dict = {"relpath": job.relpath, "identity": job.identity, "source": job.path}
    try:
        entry = _process(job, settings, detector, entry)
    except Exception as err:  # noqa: BLE001 - one bad file never stops a batch
        entry |= {"outcome": "error", "reason": f"{type(err).__name__}: {err}",
                  "traceback": traceback.format_exc(limit=6)}
    entry["time_s"] = round(time.perf_counter() - start, 4)
    return entry


def _process(job: PhotoJob, settings: PrepareSettings, detector, entry: dict) -> dict:
    if job.skip is not None:  # decided from the path: the file (or a link's target) is not read, not even stat'ed
        return entry | {"outcome": job.skip[0], "reason": job.skip[1]}
    st = os.stat(job.path)
    entry.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
    if Path(job.path).name.startswith("."):
        return entry | {"outcome": "ignored", "reason": "hidden file", "sha256": sha256_file(job.path)}
    try:
        with open(job.path, "rb") as f:
            data = f.read()
    except OSError as err:
        return entry | {"outcome": "unreadable", "reason": f"cannot read the file ({err.strerror or err})"}
    entry["sha256"] = hashlib.sha256(data).hexdigest()
    try:
        rgb, info = read_photo_bytes(data, name=job.path, policy=True)
    except PhotoError as err:
        return entry | {"outcome": err.outcome, "reason": err.reason}
    del data
    entry["photo"] = {k: v for k, v in info.to_dict().items() if k != "path"}
    return entry | _faces(rgb, settings, detector)


def _faces(rgb: np.ndarray, settings: PrepareSettings, detector) -> dict:
    template = get_template(settings.template)
    h, w = rgb.shape[:2]
    if settings.aligned or (w, h) == template.size:
        crop, matrix = rgb, np.array([[1.0, 0, 0], [0, 1.0, 0]])
        reason = "--aligned" if settings.aligned else f"already {w}x{h}, the template size"
        if (w, h) != template.size:
            from PIL import Image

            crop = np.asarray(Image.fromarray(rgb).resize(template.size, Image.BICUBIC, reducing_gap=3.0))
            matrix = np.array([[template.width / w, 0, 0.5 * template.width / w - 0.5],
                               [0, template.height / h, 0.5 * template.height / h - 0.5]])
            reason += f"; resized from {w}x{h}"
        landmarks = to_full_resolution(template.array(), (template.width / w, template.height / h))
        record = {"face": None, "landmarks": _r(landmarks, 3), "transform": _r(matrix, 6)}
        return {"outcome": "already_aligned", "reason": reason, "n_faces": None, "faces": [],
                "_crops": [("", crop, record)]}
    small, scale = detection_view(rgb, settings.max_side)
    boxes, scores, landmarks = detector.detect(small)
    sx, sy = scale
    boxes = boxes / np.array([sx, sy, sx, sy]) if len(boxes) else boxes
    landmarks = to_full_resolution(landmarks, scale) if len(landmarks) else landmarks
    faces = [{"box": _r(b, 2), "score": round(float(s), 5), "landmarks": _r(p, 3)}
             for b, s, p in zip(boxes, scores, landmarks, strict=True)]
    result = {"detect_scale": round(float(sx), 6), "n_detections": len(faces), "faces": faces}
    good = [i for i, s in enumerate(scores) if s >= settings.score_threshold]
    if not good:
        low = f" ({len(faces)} detections below score {settings.score_threshold})" if faces else ""
        return result | {"outcome": "no_face", "n_faces": 0, "reason": f"no face found{low}"}
    sizes = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    big = [i for i in good if sizes[i] >= settings.min_face_size]
    result["n_faces"] = len(big)
    if not big:
        return result | {"outcome": "too_small", "reason": f"{len(good)} face(s) found, the largest "
                         f"{max(sizes[i] for i in good):.0f} px < min_face_size {settings.min_face_size} px"}
    chosen = [big[i] for i in _choose(boxes[big], (w, h), settings.choose)]
    crops = []
    for k, i in enumerate(chosen):
        crop, matrix = warp_to_template(rgb, landmarks[i], template, border=settings.border)
        suffix = f"_{k}" if settings.choose == "all" else ""
        crops.append((suffix, crop, {"face": i, "box": faces[i]["box"], "score": faces[i]["score"],
                                     "landmarks": faces[i]["landmarks"], "transform": _r(matrix, 6)}))
    several = len(big) > 1 and settings.choose != "all"
    outcome = "multiple_faces" if several else "ok"
    reason = f"{len(big)} faces; chose face {chosen[0]} ({settings.choose})" if several else None
    return result | {"outcome": outcome, "reason": reason, "chosen": chosen, "_crops": crops}


# ------------------------------------------------------------------------------------------------ workers

_WORKER: dict = {}


def _init_worker(detector_factory: Callable, device: str, threads: int, max_pixels: int | None) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    set_max_pixels(max_pixels)
    try:
        import cv2

        cv2.setNumThreads(threads)
    except ImportError:  # pragma: no cover
        pass
    _WORKER["detector"] = detector_factory(device)
    if "torch" in sys.modules:  # MTCNN
        import torch

        torch.set_num_threads(threads)


def _work(job: PhotoJob, settings: PrepareSettings) -> dict:
    return process_photo(job, settings, _WORKER["detector"])


def _pool(workers: int, detector_factory, device: str, max_pixels: int | None = None) -> ProcessPoolExecutor:
    threads = max(1, (os.cpu_count() or 1) // workers)
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                               initargs=(detector_factory, device, threads, max_pixels))


def _run_pool(jobs: list[PhotoJob], settings, workers: int, detector_factory, device: str) -> Iterator[dict]:
    """Results in completion order. When a worker process dies (a decoder crash, out of memory) the pool is
    restarted; the jobs it was running are retried one at a time in a one-worker pool afterwards, and a job that
    kills that one too gets an ``error`` entry."""
    queue, suspects = deque(jobs), []
    running: dict[Future, PhotoJob] = {}
    pool = _pool(workers, detector_factory, device, settings.max_pixels)
    try:
        while queue or running:
            broken = False
            while queue and len(running) < 4 * workers:
                job = queue.popleft()
                try:
                    running[pool.submit(_work, job, settings)] = job
                except BrokenProcessPool:
                    queue.appendleft(job)
                    broken = True
                    break
            if running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    job = running.pop(future)
                    try:
                        result = future.result()
                    except BrokenProcessPool:
                        suspects.append(job)
                        broken = True
                        continue
                    yield result
            if broken and not running and queue:
                pool.shutdown(wait=True, cancel_futures=True)
                pool = _pool(workers, detector_factory, device, settings.max_pixels)
        pool.shutdown(wait=True)
        pool = None
        for job in suspects:
            if pool is None:
                pool = _pool(1, detector_factory, device, settings.max_pixels)
            try:
                result = pool.submit(_work, job, settings).result()
            except BrokenProcessPool:
                pool.shutdown(wait=True, cancel_futures=True)
                pool = None
                result = {"relpath": job.relpath, "identity": job.identity, "source": job.path, "outcome": "error",
                          "reason": "the worker process died on this file (a decoder crash, or out of memory); "
                                    "retried on the next run"}
            yield result
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


# ------------------------------------------------------------------------------------------------ writing


def _atomic_png(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(rgb).save(f, format="PNG")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class _Writer:
    """Writes crops (resolving name clashes between sources) and appends flushed manifest lines."""

    def __init__(self, output_root: Path, manifest_path: Path, previous: dict[str, dict], settings):
        self.root, self.previous, self.settings = output_root, previous, settings
        self.claims: dict[str, str] = {}
        for relpath, entry in previous.items():
            for crop in entry.get("crops", []):
                self.claims[crop["path"].lower()] = relpath
        self.manifest_path, self.file = manifest_path, None  # opened at the first entry: no empty manifest
        self.base = {"settings": asdict(settings), "settings_key": settings.key(), "opom_version": __version__}

    def _free(self, relpath: str, names: list[str]) -> bool:
        return all(self.claims.get(n.lower(), relpath) == relpath for n in names)

    def write(self, job: PhotoJob, result: dict) -> dict:
        crops = result.pop("_crops", [])
        entry = {**result, **self.base, "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        old = [c["path"] for c in self.previous.get(job.relpath, {}).get("crops", [])]
        if crops:
            stem, n = job.stem, 1
            names = [f"{job.identity}/{stem}{suffix}.png" for suffix, _, _ in crops]
            while not self._free(job.relpath, names):
                n += 1
                names = [f"{job.identity}/{job.stem}-{n}{suffix}.png" for suffix, _, _ in crops]
            records = []
            for name, (_, rgb, record) in zip(names, crops, strict=True):
                _atomic_png(self.root / name, rgb)
                self.claims[name.lower()] = job.relpath
                records.append({"path": name, **record})
            entry["crops"] = records
        new = {c["path"] for c in entry.get("crops", [])}
        for name in old:  # crops of an earlier version of this source that this run did not rewrite
            if name not in new and self.claims.get(name.lower()) == job.relpath:
                (self.root / name).unlink(missing_ok=True)
                self.claims.pop(name.lower(), None)
        if self.file is None:
            self.file = _open_for_append(self.manifest_path)
        self.file.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())
        self.previous[job.relpath] = entry
        return entry

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


# ------------------------------------------------------------------------------------------------ prepare


def _done(entry: dict | None, job: PhotoJob, key: str, output_root: Path) -> bool:
    if not entry or entry.get("settings_key") != key or entry.get("outcome") in RETRIED_OUTCOMES:
        return False
    if job.skip is not None:  # decided from the path alone
        return entry.get("outcome") == job.skip[0] and entry.get("reason") == job.skip[1]
    if entry.get("sha256") is None:  # the file could not even be read (permissions?): try again
        return False
    if not all((output_root / c["path"]).is_file() for c in entry.get("crops", [])):
        return False
    try:
        st = os.stat(job.path)
    except OSError:
        return False
    if entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
        return True
    return entry.get("size") == st.st_size and entry["sha256"] == sha256_file(job.path)


def _auto_workers(n: int, detector: str = DEFAULT_DETECTOR) -> int:
    """Worker processes for ``n`` photos: a worker costs ~1 s (YuNet) or ~5 s (MTCNN, torch) to start, so YuNet
    (~0.1 s per photo) gains from a pool only for large batches (experiments/benchmarks/prepare_throughput.md)."""
    per_worker = 64 if detector == "yunet" else 8
    return max(1, min(os.cpu_count() or 1, 4, n // per_worker))


def prepare(input_root: str | Path, output_root: str | Path, choose: str = "largest", workers: int | None = None,
            min_face_size: int = 32, max_side: int = 1024, resume: bool = True, aligned: bool = False,
            min_score: float | None = None, template: str = "arcface_112", border: str = "constant",
            device: str = "cpu", progress: bool = True, quiet: bool = False,
            detector_factory: Callable[[str], object] | None = None, detector: str = DEFAULT_DETECTOR,
            max_pixels: int | None = None) -> Manifest:
    """Detect, choose and align the faces of every photo under ``input_root``; crops and manifest go to
    ``output_root``. Returns the :class:`Manifest` (latest entry of every input file).

    ``choose``: ``largest`` (box area), ``central`` (box centre nearest the photo centre) or ``all``.
    ``workers``: processes (each with its own detector); 1 runs in this process; None picks 1..4 from the number
    of photos to do. ``min_face_size``: shorter box side in source pixels. ``max_side``: longer side of the copy
    that detection sees. ``resume=False`` redoes every file (new entries supersede the old). ``aligned``: every
    photo is an aligned crop already (copied, resized to the template if needed); without it, photos of exactly
    the template size are taken as aligned. ``detector``: ``yunet`` (default) or ``mtcnn``; ``min_score``: its
    score threshold (None: the detector's own default). ``detector_factory(device)`` builds another detector with
    ``detect(rgb)``; with workers > 1 it must be picklable (a module-level function). ``max_pixels``: larger photos
    are ``too_large`` (None: the default limit of :mod:`opom.data.inputs`).
    """
    settings = PrepareSettings(choose=choose, min_face_size=int(min_face_size),
                               min_score=None if min_score is None else float(min_score), max_side=int(max_side),
                               template=template, aligned=bool(aligned), border=border, detector=detector,
                               max_pixels=max_pixels).validate()
    set_max_pixels(max_pixels)
    if detector_factory is None:
        detector_factory = functools.partial(build_detector, settings.detector)
    if workers is not None and workers < 1:
        raise UserError(f"workers must be >= 1, got {workers}")
    start = time.perf_counter()
    output_root = Path(output_root).expanduser().resolve()
    input_resolved = Path(input_root).expanduser().resolve()
    if output_root == input_resolved:
        raise UserError(f"the output folder must differ from the input folder ({str(output_root)!r}): originals "
                        "are never modified")
    if input_resolved.is_relative_to(output_root) and input_resolved != output_root:
        raise UserError(f"the input folder {str(input_resolved)!r} lies inside the output folder; choose another "
                        "output folder")
    jobs, notes = scan_photos(input_resolved, exclude=output_root)
    if not jobs:
        raise UserError(f"no files under {str(input_resolved)!r} (expected <input>/<identity>/<photos>)")
    check_output_folder(output_root)
    manifest_path = output_root / MANIFEST_NAME
    if manifest_path.exists() and not os.access(manifest_path, os.W_OK):
        raise UserError(f"cannot write to the manifest {str(manifest_path)!r} (permission denied): choose another "
                        "output folder")
    previous = load_manifest(manifest_path)
    key = settings.key()
    todo = [j for j in jobs if not (resume and _done(previous.get(j.relpath), j, key, output_root))]
    n_workers = _auto_workers(len(todo), settings.detector) if workers is None else min(workers, max(1, len(todo)))
    writer = _Writer(output_root, manifest_path, previous, settings)
    by_relpath = {j.relpath: j for j in todo}
    done = 0
    try:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="photo", desc="prepare", disable=not progress or not todo)
        if n_workers == 1:
            built = detector_factory(device) if any(j.skip is None for j in todo) else None
            results = (process_photo(job, settings, built) for job in todo)
        else:
            results = _run_pool(todo, settings, n_workers, detector_factory, device)
        try:
            for result in results:
                writer.write(by_relpath[result["relpath"]], result)
                done += 1
                bar.update(1)
        finally:
            results.close()
            bar.close()
    except KeyboardInterrupt:
        print(f"\nprepare: interrupted after {done} of {len(todo)} files; the manifest keeps them: run the same "
              "command again to resume", file=sys.stderr)
        raise
    finally:
        writer.close()
    current = {j.relpath: writer.previous[j.relpath] for j in jobs if j.relpath in writer.previous}
    manifest = Manifest(manifest_path, output_root, current, processed=done, skipped=len(jobs) - len(todo),
                        elapsed_s=time.perf_counter() - start, notes=notes)
    if not quiet:
        print(manifest.summary())
    return manifest


# ------------------------------------------------------------------------------------------------ CLI


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, status 2
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


EXIT_HELP = ("exit status: 0 the run finished (every file has a manifest entry; files that could not be used are "
             "counted in the summary and named in the manifest, they do not change the status); 2 bad input (one "
             "error line: a missing input, an output folder that is a file or not writable, bad options); 130 "
             "Ctrl-C before the run finished (the manifest keeps what was done: run the same command to resume). "
             "Once the summary is printed, Ctrl-C no longer changes the status.")


def main(argv: list[str] | None = None) -> int:
    import contextlib
    import signal

    from opom.data.inputs import megapixels

    def mp(text: str) -> int:
        try:
            return megapixels(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parser = _Parser(prog="opom-prepare",
                     description="Align the faces of <input>/<identity>/<photos> to 112x112 crops in <output>, "
                                 "with a manifest (<output>/manifest.jsonl) of every file's outcome. Re-running "
                                 "skips finished files and resumes an interrupted run. Which files are photos is "
                                 "the same policy as opom enroll / protect / check.", epilog=EXIT_HELP)
    parser.add_argument("input", help="folder of identity folders of photos (or one folder of photos)")
    parser.add_argument("output", help="folder for the crops and the manifest (created; must differ from input)")
    parser.add_argument("--choose", choices=CHOICES, default="largest",
                        help="which face of a photo: the largest, the most central, or all (default: largest)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: 1-4 by workload)")
    parser.add_argument("--aligned", action="store_true", help="the photos are aligned crops: copy, do not align")
    parser.add_argument("--detector", choices=("yunet", "mtcnn"), default=DEFAULT_DETECTOR,
                        help="face detector: yunet (OpenCV, fast; default) or mtcnn (facenet-pytorch)")
    parser.add_argument("--min-face-size", type=int, default=32, help="smallest face box side in pixels (32)")
    parser.add_argument("--min-score", type=float, default=None,
                        help="smallest face score of the detector (default: yunet 0.6, mtcnn 0.9)")
    parser.add_argument("--max-side", type=int, default=1024, help="longer side of the detection copy (1024)")
    parser.add_argument("--max-pixels", type=mp, default=None, metavar="MP",
                        help="largest photo taken, in megapixels (default 200); larger ones are too_large, checked "
                             "before decoding (decompression bombs)")
    parser.add_argument("--template", default="arcface_112", help="alignment template (default: arcface_112)")
    parser.add_argument("--border", choices=("constant", "replicate"), default="constant",
                        help="fill outside the photo: black (constant, as insightface) or edge pixels")
    parser.add_argument("--device", default="cpu", help="device for --detector mtcnn (cpu, cuda, cuda:1 ...)")
    parser.add_argument("--no-resume", action="store_true", help="redo every file, even those already done")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    handler = signal.getsignal(signal.SIGINT)
    try:
        manifest = prepare(args.input, args.output, choose=args.choose, workers=args.workers,
                           min_face_size=args.min_face_size, max_side=args.max_side, resume=not args.no_resume,
                           aligned=args.aligned, min_score=args.min_score, template=args.template,
                           border=args.border, device=args.device, progress=not args.no_progress, quiet=True,
                           detector=args.detector, max_pixels=args.max_pixels)
        with contextlib.suppress(ValueError):  # done and recorded: Ctrl-C from here on changes nothing
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        print(manifest.summary())
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        if argv is not None and handler is not None:  # called from Python: give Ctrl-C back
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGINT, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
