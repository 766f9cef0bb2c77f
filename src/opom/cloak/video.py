"""Protect videos: PyAV (FFmpeg) decoding and H.264 encoding, faces tracked and landmarks smoothed over time.

Two passes over the file:
1. detect faces every ``detect_every`` frames and link detections into tracks (greedy IoU association; a track ends
   after ``max_gap`` frames unseen). Each track's landmarks are linearly interpolated between detections and
   smoothed with a centred Gaussian over time (``smooth_sigma`` frames; zero lag, since the whole track is known),
   so the mask does not jitter from frame to frame with the detector's noise. Tracks are chosen as for photos:
   ``all``, the ``largest`` (largest summed box area over the clip) or those that ``match`` the enrolled person
   (mean similarity over up to 8 frames of the track).
2. decode again, add the mask to every chosen track's face in each frame (:meth:`Protector.apply`), and encode
   with libx264 (``crf``, ``preset``, ``pix_fmt``) at the input's size, frame rate and timestamps. Audio streams are
   copied packet for packet (not re-encoded). The file is written to a temporary name, then renamed.

Then a few frames of the output are decoded to measure the aligned change and its retention, as for photos.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from opom.cloak.blend import aligned_change, retention
from opom.cloak.faces import Face, detect_faces
from opom.cloak.photofile import _default_mode
from opom.errors import UserError

MUXERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
MEASURED_FRAMES = 8


def _av():
    try:
        import av
    except ImportError as err:  # pragma: no cover - av is a base dependency
        raise UserError("video needs PyAV: pip install av") from err
    return av


@dataclass
class Track:
    """One face followed through the clip: detections by frame index, then per-frame landmarks."""

    detections: dict[int, Face] = field(default_factory=dict)
    crops: list[np.ndarray] = field(default_factory=list)  # aligned crops of some detections (for matching)
    landmarks: dict[int, np.ndarray] = field(default_factory=dict)  # filled by :func:`fill_and_smooth`
    similarity: float | None = None

    @property
    def last(self) -> int:
        return max(self.detections)

    @property
    def first(self) -> int:
        return min(self.detections)

    def total_area(self) -> float:
        return sum(f.area for f in self.detections.values())


def iou(a: np.ndarray, b: np.ndarray) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


class Tracker:
    """Greedy IoU association of per-frame detections into tracks."""

    def __init__(self, max_gap: int, min_iou: float = 0.3):
        self.max_gap, self.min_iou = max_gap, min_iou
        self.tracks: list[Track] = []

    def update(self, index: int, faces: list[Face]) -> list[int]:
        """Add one frame's faces; returns the track index of each face."""
        active = [k for k, t in enumerate(self.tracks) if index - t.last <= self.max_gap]
        pairs = sorted(((iou(self.tracks[k].detections[self.tracks[k].last].box, f.box), k, j)
                        for k in active for j, f in enumerate(faces)), reverse=True)
        assigned: dict[int, int] = {}
        used: set[int] = set()
        for score, k, j in pairs:
            if score < self.min_iou or k in used or j in assigned:
                continue
            assigned[j] = k
            used.add(k)
        for j, face in enumerate(faces):
            if j not in assigned:
                self.tracks.append(Track())
                assigned[j] = len(self.tracks) - 1
            self.tracks[assigned[j]].detections[index] = face
        return [assigned[j] for j in range(len(faces))]


def gaussian_smooth(values: np.ndarray, sigma: float) -> np.ndarray:
    """Centred Gaussian smoothing along axis 0 (time); ``sigma`` in frames.

    The ends are padded by odd reflection (``2 x[0] - x[k]``), so steady motion passes without lag right up to the
    first and last frames (a plain truncated kernel would pull the ends towards the inside).
    """
    n = len(values)
    if sigma <= 0 or n < 3:
        return values.astype(np.float64, copy=True)
    radius = min(int(np.ceil(3 * sigma)), n - 1)
    x = values.astype(np.float64)
    padded = np.concatenate([2 * x[:1] - x[radius:0:-1], x, 2 * x[-1:] - x[-2:-radius - 2:-1]])
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    out = np.zeros_like(x)
    for k, w in enumerate(kernel):
        out += w * padded[k:k + n]
    return out


def fill_and_smooth(track: Track, n_frames: int, sigma: float, hold: int) -> None:
    """Per-frame landmarks of a track: interpolated between detections, held ``hold`` frames past its ends, smoothed."""
    idx = np.array(sorted(track.detections))
    pts = np.stack([track.detections[i].landmarks for i in idx]).reshape(len(idx), -1)
    frames = np.arange(max(0, idx[0] - hold), min(n_frames, idx[-1] + hold + 1))
    filled = np.stack([np.interp(frames, idx, pts[:, c]) for c in range(pts.shape[1])], axis=1)
    smooth = gaussian_smooth(filled, sigma).reshape(len(frames), 5, 2)
    track.landmarks = {int(f): smooth[k] for k, f in enumerate(frames)}


def jitter(landmarks: list[np.ndarray]) -> float:
    """Mean size (pixels) of the second difference of landmarks over consecutive frames: frame-to-frame shake."""
    if len(landmarks) < 3:
        return 0.0
    p = np.stack(landmarks)
    return float(np.linalg.norm(p[2:] - 2 * p[1:-1] + p[:-2], axis=-1).mean())


class _VideoError(Exception):
    def __init__(self, outcome: str, reason: str):
        super().__init__(reason)
        self.outcome, self.reason = outcome, reason


def _open_input(av, source: Path):
    try:
        container = av.open(str(source))
    except av.error.FileNotFoundError as err:
        raise UserError(f"{source}: does not exist") from err
    except av.error.InvalidDataError as err:
        raise _VideoError("not_an_image", "not a video file FFmpeg can read (or a corrupt one); re-export it as "
                                          "MP4 (H.264)") from err
    except av.FFmpegError as err:
        raise _VideoError("unreadable", f"cannot be opened ({err})") from err
    if not container.streams.video:
        container.close()
        raise _VideoError("unsupported", "has no video stream")
    return container


def protect_video(protector, source: str | Path, output: str | Path, progress: bool = True) -> dict:
    """Protect one video file into ``output``; returns its report entry (never raises for a bad file)."""
    start = time.perf_counter()
    source, output = Path(source), Path(output)
    entry: dict = {"source": str(source), "output": None, "kind": "video"}
    try:
        entry |= _protect_video(protector, source, output, progress)
    except _VideoError as err:
        entry |= {"outcome": err.outcome, "reason": err.reason}
    except UserError as err:
        entry |= {"outcome": "unsupported", "reason": str(err)}
    except Exception as err:  # noqa: BLE001 - one bad file never stops a batch
        entry |= {"outcome": "error", "reason": f"{type(err).__name__}: {err}",
                  "traceback": traceback.format_exc(limit=6)}
    entry["time_s"] = round(time.perf_counter() - start, 3)
    return entry


def _protect_video(protector, source: Path, output: Path, progress: bool) -> dict:
    from tqdm import tqdm

    av = _av()
    settings = protector.settings
    if output.exists() and not settings.overwrite:
        return {"outcome": "exists", "reason": f"{output} exists; --overwrite replaces it"}
    muxer = MUXERS.get(output.suffix.lower())
    if muxer is None:
        raise _VideoError("unsupported", f"videos are written as {', '.join(MUXERS)}; convert {source.suffix} first")
    try:
        sha = hashlib.sha256(source.read_bytes()).hexdigest()
    except OSError as err:
        raise _VideoError("unreadable", f"cannot read the file ({err.strerror or err})") from err
    # ---- pass 1: detect and track
    container = _open_input(av, source)
    try:
        vstream = container.streams.video[0]
        total = vstream.frames or None
        width, height = vstream.codec_context.width, vstream.codec_context.height
        rate = vstream.average_rate or vstream.guessed_rate or Fraction(25)
        every = settings.detect_every
        tracker = Tracker(max_gap=max(2 * every, 5))
        match = settings.choose == "match"
        raw_detections = n_frames = 0
        bar = tqdm(total=total, unit="frame", desc=f"detect {source.name}", disable=not progress)
        try:
            for n, frame in enumerate(container.decode(vstream)):
                n_frames = n + 1
                bar.update(1)
                if n % every:
                    continue
                rgb = frame.to_ndarray(format="rgb24")
                faces = detect_faces(rgb, protector.detector, settings.detect)
                raw_detections += len(faces)
                ids = tracker.update(n, faces)
                if match:
                    from opom.data.alignment import warp_to_template

                    for k, face in zip(ids, faces, strict=True):
                        track = tracker.tracks[k]
                        if len(track.crops) < 64:
                            track.crops.append(warp_to_template(rgb, face.landmarks, "arcface_112")[0])
        except av.FFmpegError as err:
            raise _VideoError("unreadable", f"decoding failed at frame {n_frames} ({err}); the file is probably "
                                            "truncated or corrupt") from err
        finally:
            bar.close()
    finally:
        container.close()
    if not n_frames:
        raise _VideoError("unreadable", "no frame could be decoded")
    entry: dict = {"format": muxer, "size": [width, height], "fps": float(rate), "frames": n_frames, "sha256": sha,
                   "detections": raw_detections, "n_tracks": len(tracker.tracks)}
    tracks = tracker.tracks
    if not tracks:
        return entry | {"outcome": "no_face", "reason": "no face found in any frame"}
    for t in tracks:
        fill_and_smooth(t, n_frames, settings.smooth_sigma, hold=every - 1)
    chosen = _choose_tracks(protector, tracks, settings.choose)
    entry["tracks"] = [{"first": t.first, "last": t.last, "detections": len(t.detections),
                        "similarity": None if t.similarity is None else round(t.similarity, 4)} for t in tracks]
    entry["chosen_tracks"] = chosen
    if not chosen:
        return entry | {"outcome": "no_match", "reason": f"{len(tracks)} face track(s), none matches "
                        f"{protector.person.identity!r}; use --choose largest or all to protect them anyway"}
    raw = [np.stack([tracks[k].detections[i].landmarks for i in sorted(tracks[k].detections)]) for k in chosen]
    entry["landmark_jitter_px"] = {"detected": round(float(np.mean([jitter(list(r)) for r in raw])), 4),
                                   "smoothed": round(float(np.mean([jitter(
                                       [tracks[k].landmarks[i] for i in sorted(tracks[k].landmarks)
                                        if i in tracks[k].detections]) for k in chosen])), 4)}
    # ---- pass 2: protect and encode
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=output.suffix)
    os.close(fd)
    try:
        audio = _encode(av, protector, source, tmp, muxer, tracks, chosen, n_frames, progress)
        measured = _measure(av, protector, source, Path(tmp), tracks, chosen, n_frames)
        os.chmod(tmp, _default_mode())
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    st = output.stat()  # recorded so that a later run recognises its own output (outcome "done")
    return entry | measured | {"outcome": "protected", "reason": None, "output": str(output), "audio_streams": audio,
                               "codec": "h264", "crf": settings.crf, "pix_fmt": settings.pix_fmt,
                               "output_size": st.st_size, "output_mtime_ns": st.st_mtime_ns}


def _choose_tracks(protector, tracks: list[Track], how: str) -> list[int]:
    if how == "all":
        return list(range(len(tracks)))
    if how == "largest":
        return [int(np.argmax([t.total_area() for t in tracks]))]
    matcher = protector.matcher
    chosen = []
    for k, t in enumerate(tracks):
        if not t.crops:
            continue
        picks = np.linspace(0, len(t.crops) - 1, min(8, len(t.crops))).round().astype(int)
        t.similarity = float(np.mean(matcher.similarities([t.crops[i] for i in picks])))
        if t.similarity >= matcher.threshold:
            chosen.append(k)
    return chosen


def _encode(av, protector, source: Path, tmp: str, muxer: str, tracks, chosen, n_frames: int, progress: bool
            ) -> int:
    """Pass 2: write the protected video to ``tmp``; returns the number of audio streams copied."""
    from tqdm import tqdm

    settings = protector.settings
    container = _open_input(av, source)
    out = av.open(tmp, "w", format=muxer)
    try:
        vin = container.streams.video[0]
        ain = list(container.streams.audio)
        vout = out.add_stream("libx264", rate=vin.average_rate or vin.guessed_rate or Fraction(25))
        vout.width, vout.height = vin.codec_context.width, vin.codec_context.height
        vout.pix_fmt = settings.pix_fmt
        vout.time_base = vin.time_base
        vout.options = {"crf": str(settings.crf), "preset": settings.preset}
        aout = {a.index: out.add_stream_from_template(a) for a in ain}
        bar = tqdm(total=n_frames, unit="frame", desc=f"protect {source.name}", disable=not progress)
        index = 0
        for packet in container.demux(vin, *ain):
            if packet.stream.type == "audio":
                if packet.dts is None:
                    continue
                packet.stream = aout[packet.stream.index]
                out.mux(packet)
                continue
            for frame in packet.decode():
                rgb = frame.to_ndarray(format="rgb24")
                landmarks = [tracks[k].landmarks[index] for k in chosen if index in tracks[k].landmarks]
                if landmarks:
                    rgb = protector.apply(rgb, landmarks)
                new = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                new.pts, new.time_base = frame.pts, frame.time_base
                out.mux(vout.encode(new))
                index += 1
                bar.update(1)
        out.mux(vout.encode(None))
        bar.close()
    finally:
        out.close()
        container.close()
    return len(ain)


def _measure(av, protector, source: Path, written: Path, tracks, chosen, n_frames: int) -> dict:
    """Aligned change and retention of the mask in up to :data:`MEASURED_FRAMES` frames of the written video."""
    wanted = set(np.linspace(0, n_frames - 1, min(MEASURED_FRAMES, n_frames)).round().astype(int).tolist())
    a, b = _open_input(av, source), _open_input(av, written)
    worst, rets = 0, []
    try:
        for i, (fa, fb) in enumerate(zip(a.decode(a.streams.video[0]), b.decode(b.streams.video[0]), strict=False)):
            if i not in wanted:
                continue
            ra, rb = fa.to_ndarray(format="rgb24"), fb.to_ndarray(format="rgb24")
            for k in chosen:
                lm = tracks[k].landmarks.get(i)
                if lm is None:
                    continue
                change = aligned_change(ra, rb, lm, protector.person.template)
                worst = max(worst, int(np.abs(change).max()))
                rets.append(retention(change, protector.intended))
    finally:
        a.close()
        b.close()
    return {"aligned_max_change": worst, "retention": round(float(np.mean(rets)), 4) if rets else None,
            "measured_frames": len(wanted)}


def pan_zoom_clip(photo: np.ndarray, path: str | Path, frames: int = 24, size: tuple[int, int] = (320, 240),
                  fps: int = 12, audio: bool = True, centre: tuple[float, float] = (0.5, 0.35), span: float = 0.6,
                  zoom: float = 1.25, pan: float = 0.08, crf: int = 10) -> Path:
    """A short H.264 clip (with an AAC 440 Hz tone) that pans and zooms over a still photo: a test/demo video.

    The window is ``span`` of the photo's width at ``centre`` (fractions of width and height) in the first frame;
    over the clip it narrows by ``zoom`` and its centre moves right by ``pan`` of the width. Frames are ``size``
    (width, height).
    """
    import cv2

    av = _av()
    path = Path(path)
    aspect = size[0] / size[1]
    factor = size[0] * zoom / (span * photo.shape[1])
    if factor < 1:  # area-reduce first, so that the warp below does not alias
        photo = cv2.resize(photo, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
    h, w = photo.shape[:2]
    out = av.open(str(path), "w")
    try:
        v = out.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = size[0], size[1], "yuv420p"
        v.options = {"crf": str(crf), "preset": "fast"}
        a = None
        if audio:
            a = out.add_stream("aac", rate=44100)
            a.layout = "mono"
        for i in range(frames):
            t = i / max(1, frames - 1)
            cw = span * w / (1 + (zoom - 1) * t)
            ch = cw / aspect
            cx, cy = (centre[0] + pan * t) * w, centre[1] * h
            x0, y0 = cx - cw / 2, cy - ch / 2
            m = np.array([[size[0] / cw, 0, -x0 * size[0] / cw], [0, size[1] / ch, -y0 * size[1] / ch]])
            frame = cv2.warpAffine(photo, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            out.mux(v.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        out.mux(v.encode(None))
        if a is not None:
            samples = int(44100 * frames / fps)
            tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(samples) / 44100)).astype(np.float32)
            for s in range(0, samples, 1024):
                chunk = np.ascontiguousarray(tone[s:s + 1024][None])
                af = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                af.sample_rate, af.pts = 44100, s
                out.mux(a.encode(af))
            out.mux(a.encode(None))
    finally:
        out.close()
    return path
