"""``protect``: photos, folders and videos -> protected copies carrying a person's mask.

For every face chosen in a photo (all, the largest, or those matching the enrolled person), the 5 landmarks give
the similarity ``M`` onto the mask's template; the mask is added in that aligned space by warping it back with the
inverse transform onto the photo at its original resolution, blended into the face's footprint only (feathered
edge, :mod:`opom.cloak.blend`), and the result is quantised once to the file's bit depth. The copy keeps the
original's format, size, orientation, colour profile and metadata (:mod:`opom.cloak.photofile`). Lossy formats are
re-encoded at the lowest quality of ``jpeg_qualities`` at which the mask survives: the perturbation measured in
each aligned face after decoding must have a cosine of at least ``min_survival`` with the lossless one.

Originals are only ever read. Outputs are written atomically, never onto an input; an existing output is left
alone unless ``overwrite``. Every input file gets one line in the report (:mod:`opom.cloak.report`).
"""

from __future__ import annotations

import hashlib
import os
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from opom.cloak import photofile as pf
from opom.cloak.blend import add_perturbation, aligned_change, combine, face_field, feather_alpha, retention
from opom.cloak.faces import CHOICES, DetectSettings, Face, FaceMatcher, choose_faces, detect_faces
from opom.cloak.mask import PersonMask, load_person_mask
from opom.cloak.report import REPORT_NAME, ReportWriter, summary
from opom.data.alignment import similarity_transform, warp_to_template
from opom.data.photos import PhotoError
from opom.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".tif", ".tiff", ".bmp", ".mpo")
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv")
MATCH_TEMPLATE = "arcface_112"  # recognition models of the zoo take canonical 112x112 crops


@dataclass(frozen=True)
class ProtectSettings:
    """How faces are chosen and protected, and how copies are written."""

    choose: str = "match"  # all | largest | match (needs the embedding that `opom enroll` stores)
    template: str = "arcface_112"
    feather: float = 6.0  # crop pixels over which the mask fades out at the edge of the face region
    detect: DetectSettings = field(default_factory=DetectSettings)
    jpeg_qualities: tuple[int, ...] = (95, 97, 99, 100)  # tried in order (lossy formats)
    min_survival: float = 0.98
    strip_location: bool = False
    overwrite: bool = False
    suffix: str = "_protected"  # output name next to the input when no output folder is given
    # video
    detect_every: int = 1  # detect faces every k-th frame; landmarks in between are interpolated
    smooth_sigma: float = 1.5  # temporal Gaussian smoothing of landmarks, in frames (0: off)
    crf: int = 12  # x264 constant rate factor (0 = lossless, 18 = visually lossless, lower = better)
    preset: str = "medium"  # x264 speed preset
    pix_fmt: str = "yuv444p"  # yuv444p keeps the mask's colour detail; yuv420p plays everywhere

    def validate(self) -> ProtectSettings:
        if self.choose not in CHOICES:
            raise UserError(f"choose must be one of {', '.join(CHOICES)}, got {self.choose!r}")
        self.detect.validate()
        if self.feather < 0:
            raise UserError(f"feather must be >= 0 crop pixels, got {self.feather}")
        if not self.jpeg_qualities or not all(1 <= int(q) <= 100 for q in self.jpeg_qualities):
            raise UserError(f"JPEG qualities must lie in 1..100, got {list(self.jpeg_qualities)}")
        if not 0 <= self.min_survival <= 1:
            raise UserError(f"min_survival must lie in [0, 1], got {self.min_survival}")
        if not self.suffix:
            raise UserError("the output suffix must not be empty (the copy would replace the original)")
        if self.detect_every < 1:
            raise UserError(f"detect_every must be >= 1 frame, got {self.detect_every}")
        if self.smooth_sigma < 0:
            raise UserError(f"smooth_sigma must be >= 0 frames, got {self.smooth_sigma}")
        if not 0 <= self.crf <= 51:
            raise UserError(f"crf must lie in 0..51, got {self.crf}")
        if self.pix_fmt not in ("yuv444p", "yuv420p"):
            raise UserError(f"pix_fmt must be yuv444p or yuv420p, got {self.pix_fmt!r}")
        return self


@dataclass
class FaceChoice:
    """The faces found in an image, which were chosen, and their similarity to the person (match only)."""

    faces: list[Face]
    chosen: list[int]
    similarities: list[float | None]

    def to_dict(self) -> dict:
        faces = [f.to_dict() | ({"similarity": round(s, 4)} if s is not None else {})
                 for f, s in zip(self.faces, self.similarities, strict=True)]
        return {"n_faces": len(self.faces), "faces": faces, "chosen": self.chosen}


class Protector:
    """A person's mask ready to be applied: detector, face choice and the perturbation of chosen faces."""

    def __init__(self, person: PersonMask, settings: ProtectSettings = ProtectSettings(), detector=None,
                 matcher: FaceMatcher | None = None, device: str = "cpu"):
        self.person, self.settings = person, settings.validate()
        if detector is None:
            from opom.data.prepare import default_detector

            detector = default_detector(device)
        self.detector = detector
        self._matcher = matcher
        if settings.choose == "match" and matcher is None and person.match is None:
            raise UserError(f"mask file {person.path!r} holds no enrolment embedding for --choose match (it was not "
                            "made by `opom enroll`): use --choose largest or --choose all")
        fh, fw = person.delta.shape[:2]
        self.intended = person.delta * feather_alpha(fw, fh, settings.feather)[..., None]

    @property
    def matcher(self) -> FaceMatcher:
        if self._matcher is None:
            self._matcher = build_matcher(self.person)
        return self._matcher

    def choose(self, rgb: np.ndarray) -> FaceChoice:
        """Detect the faces of an upright RGB uint8 image and choose those to protect."""
        faces = detect_faces(rgb, self.detector, self.settings.detect)
        crops = None
        if self.settings.choose == "match" and faces:
            crops = [warp_to_template(rgb, f.landmarks, MATCH_TEMPLATE)[0] for f in faces]
        chosen, sims = choose_faces(faces, self.settings.choose, crops,
                                    self.matcher if self.settings.choose == "match" else None)
        return FaceChoice(faces, chosen, sims)

    def matrices(self, landmarks: list[np.ndarray]) -> list[np.ndarray]:
        return [similarity_transform(lm, self.person.template.array()) for lm in landmarks]

    def perturbation(self, landmarks: list[np.ndarray], image_hw: tuple[int, int]
                     ) -> tuple[np.ndarray, np.ndarray] | None:
        """The combined perturbation (H, W, 3 grey levels) and footprint (H, W) of faces with these landmarks."""
        fields = [face_field(m, self.person.delta, image_hw, self.settings.feather) for m in self.matrices(landmarks)]
        return combine(fields, image_hw)

    def apply(self, pixels: np.ndarray, landmarks: list[np.ndarray], levels: float = 255.0) -> np.ndarray:
        """``pixels`` (upright, H x W [x C], uint8/uint16) with the mask added to the faces at ``landmarks``."""
        result = self.perturbation(landmarks, pixels.shape[:2])
        if result is None:
            return pixels.copy()
        total, footprint = result
        return add_perturbation(pixels, total, footprint, levels)

    def measure(self, before_rgb: np.ndarray, after_rgb: np.ndarray, landmarks) -> dict:
        """What the aligned crop of a face shows of the change: max |change| (grey levels) and retention."""
        change = aligned_change(before_rgb, after_rgb, landmarks, self.person.template)
        return {"aligned_max_change": int(np.abs(change).max()),
                "retention": round(retention(change, self.intended), 4)}

    # ------------------------------------------------------------------------------------------- photos

    def protect_photo(self, source: str | Path, output: str | Path) -> dict:
        """Protect one photo file into ``output``; returns its report entry (never raises for a bad file)."""
        start = time.perf_counter()
        source, output = Path(source), Path(output)
        entry: dict = {"source": str(source), "output": None, "kind": "photo"}
        try:
            entry |= self._protect_photo(source, output)
        except PhotoError as err:
            entry |= {"outcome": getattr(err, "outcome", "unreadable"), "reason": err.reason}
        except UserError as err:
            entry |= {"outcome": "unsupported", "reason": str(err)}
        except Exception as err:  # noqa: BLE001 - one bad file never stops a batch
            entry |= {"outcome": "error", "reason": f"{type(err).__name__}: {err}",
                      "traceback": traceback.format_exc(limit=6)}
        entry["time_s"] = round(time.perf_counter() - start, 4)
        return entry

    def _protect_photo(self, source: Path, output: Path) -> dict:
        if output.exists() and not self.settings.overwrite:
            return {"outcome": "exists", "reason": f"{output} exists; --overwrite replaces it"}
        photo = pf.load_stored(source)
        sha = hashlib.sha256(Path(source).read_bytes()).hexdigest()
        rgb = photo.display_rgb8()
        h, w = rgb.shape[:2]
        entry: dict = {"format": photo.format, "mode": photo.mode, "size": [w, h], "orientation": photo.orientation,
                       "sha256": sha, "notes": list(photo.notes)}
        t0 = time.perf_counter()
        choice = self.choose(rgb)
        entry |= choice.to_dict() | {"detect_s": round(time.perf_counter() - t0, 4)}
        if not choice.faces:
            return entry | {"outcome": "no_face", "reason": "no face found"}
        if not choice.chosen:
            best = max((s for s in choice.similarities if s is not None), default=float("nan"))
            return entry | {"outcome": "no_match", "reason": f"{len(choice.faces)} face(s), none matches "
                            f"{self.person.identity!r} (best similarity {best:.3f} < {self.matcher.threshold:.3f}); "
                            "use --choose largest or all to protect them anyway"}
        landmarks = [choice.faces[i].landmarks for i in choice.chosen]
        display = self.apply(photo.display(), landmarks, photo.levels)
        stored = np.ascontiguousarray(pf.to_stored(display, photo.orientation))
        data, written, codec = self._encode(photo, stored, pf.as_rgb8(display), landmarks)
        after = pf.as_rgb8(pf.to_display(written, photo.orientation))
        faces = []
        for i, lm, m in zip(choice.chosen, landmarks, self.matrices(landmarks), strict=True):
            faces.append({"face": i, "transform": np.round(m, 6).tolist(), **self.measure(rgb, after, lm)})
        if Path(source).resolve() == output.resolve():  # also guarded when planning; never write onto an original
            raise UserError(f"refusing to overwrite the original {source}")
        pf.atomic_write(output, data)
        return entry | codec | {"outcome": "protected", "reason": None, "output": str(output),
                                "protected_faces": faces, "strip_location": self.settings.strip_location}

    def _encode(self, photo: pf.StoredPhoto, stored: np.ndarray, lossless_rgb: np.ndarray, landmarks
                ) -> tuple[bytes, np.ndarray, dict]:
        """Encode the protected pixels; lossy formats at the lowest quality at which the mask survives."""
        strip = self.settings.strip_location
        if photo.lossless or photo.format not in pf.LOSSY:
            data = pf.encode(photo, stored, strip_location=strip)
            written = pf.decode_pixels(data)
            if written.shape != stored.shape or not np.array_equal(written, stored):
                raise RuntimeError(f"the {photo.format} encoder did not keep the pixels exactly")
            return data, written, {"lossless": True}
        rgb = photo.display_rgb8()
        base = [aligned_change(rgb, lossless_rgb, lm, self.person.template) for lm in landmarks]
        tried = []
        for quality in self.settings.jpeg_qualities:
            data = pf.encode(photo, stored, quality=int(quality), strip_location=strip)
            written = pf.decode_pixels(data)
            after = pf.as_rgb8(pf.to_display(written, photo.orientation))
            survival = min(retention(aligned_change(rgb, after, lm, self.person.template), b)
                           for lm, b in zip(landmarks, base, strict=True))
            tried.append({"quality": int(quality), "survival": round(survival, 4)})
            if survival >= self.settings.min_survival:
                break
        codec = {"lossless": False, "quality": tried[-1]["quality"], "survival": tried[-1]["survival"],
                 "qualities_tried": tried}
        if tried[-1]["survival"] < self.settings.min_survival:
            codec["warning"] = (f"the mask survives encoding only at {tried[-1]['survival']:.3f} < min_survival "
                                f"{self.settings.min_survival}; save as PNG for a lossless copy")
        return data, written, codec


def build_matcher(person: PersonMask, cache_dir: str | Path | None = None) -> FaceMatcher:
    """The recognition model and enrolment embedding stored in the mask file by ``opom enroll``."""
    from opom.models.zoo import build_face_model

    info = person.match
    if info is None:
        raise UserError(f"mask file {person.path!r} holds no enrolment embedding: use --choose largest or all")
    model = build_face_model(dict(info["model"]), cache_dir=cache_dir)
    return FaceMatcher(model, info["embedding"], float(info["threshold"]), name=info["model"].get("name", ""))


# ------------------------------------------------------------------------------------------- planning


@dataclass
class Job:
    source: Path
    output: Path
    kind: str  # photo | video


def kind_of(path: Path) -> str:
    return "video" if path.suffix.lower() in VIDEO_SUFFIXES else "photo"


def plan(inputs: list[str | Path], out_dir: str | Path | None, suffix: str = "_protected"
         ) -> tuple[list[Job], list[str]]:
    """The jobs for files and folders (walked recursively; photos and videos by suffix) and notes.

    With ``out_dir`` a file goes to ``out_dir/<name>`` and a folder's files to ``out_dir/<path in the folder>``;
    without, next to the input as ``<stem><suffix><ext>`` (earlier outputs, named so, are not walked).
    Raises :class:`UserError` if an output would be an input or two inputs would share an output.
    """
    if not inputs:
        raise UserError("no input: give photos, videos or folders")
    out = Path(out_dir).expanduser().resolve() if out_dir is not None else None
    jobs: list[Job] = []
    notes: list[str] = []
    skipped = 0
    for raw in inputs:
        path = Path(raw).expanduser()
        if not path.exists():
            raise UserError(f"input {str(path)!r} does not exist")
        if path.is_file():
            dst = out / path.name if out else path.with_name(f"{path.stem}{suffix}{path.suffix}")
            jobs.append(Job(path, dst, kind_of(path)))
            continue
        root = path.resolve()
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and (out is None or here / d != out))
            for name in sorted(filenames):
                file = here / name
                ext = file.suffix.lower()
                if name.startswith(".") or ext not in IMAGE_SUFFIXES + VIDEO_SUFFIXES:
                    skipped += 1
                    continue
                if out is None and file.stem.endswith(suffix):
                    skipped += 1
                    continue
                dst = out / file.relative_to(root) if out else file.with_name(f"{file.stem}{suffix}{file.suffix}")
                jobs.append(Job(file, dst, kind_of(file)))
    if skipped:
        notes.append(f"{skipped} file(s) in the folders skipped (hidden, not a photo/video suffix, or an earlier "
                     f"'{suffix}' output)")
    sources = {j.source.resolve() for j in jobs}
    seen: dict[Path, Path] = {}
    for job in jobs:
        dst = job.output.resolve()
        if dst in sources:
            raise UserError(f"the output for {job.source} would be {dst}, an input file: originals are never "
                            "overwritten; choose another --out folder")
        if dst in seen:
            raise UserError(f"{seen[dst]} and {job.source} would both be written to {dst}; protect them into "
                            "different --out folders")
        seen[dst] = job.source
    return jobs, notes


def default_report_path(inputs: list[str | Path], out_dir: str | Path | None) -> Path:
    if out_dir is not None:
        return Path(out_dir).expanduser() / REPORT_NAME
    first = Path(inputs[0]).expanduser()
    return (first if first.is_dir() else first.parent) / REPORT_NAME


def protect(inputs: list[str | Path] | str | Path, mask: str | Path | PersonMask, out: str | Path | None = None,
            identity: str | None = None, settings: ProtectSettings = ProtectSettings(),
            report: str | Path | None = None, detector=None, device: str = "cpu", progress: bool = True,
            quiet: bool = False) -> list[dict]:
    """Protect photos, videos and folders with a person's mask; returns the report entries (one per file).

    ``mask``: a mask file from ``opom enroll`` (or a loaded :class:`PersonMask`); ``identity`` picks a person in a
    file with several. ``out``: output folder (default: next to each input, ``<stem>_protected<ext>``).
    ``report``: the JSON-lines report (default ``opom_protect_report.jsonl`` in ``out`` or the first input's folder).
    """
    from tqdm import tqdm

    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    settings = settings.validate()
    person = mask if isinstance(mask, PersonMask) else load_person_mask(mask, identity, settings.template)
    jobs, notes = plan(list(inputs), out, settings.suffix)
    if not jobs:
        raise UserError(f"no photos or videos found in {', '.join(map(str, inputs))} (photo suffixes: "
                        f"{' '.join(IMAGE_SUFFIXES)}; videos: {' '.join(VIDEO_SUFFIXES)})")
    protector = Protector(person, settings, detector=detector, device=device)
    report_path = Path(report).expanduser() if report else default_report_path(list(inputs), out)
    start = time.perf_counter()
    with ReportWriter(report_path) as writer:
        bar = tqdm(jobs, unit="file", desc="protect", disable=not progress or len(jobs) < 2)
        for job in bar:
            if job.kind == "video":
                from opom.cloak.video import protect_video

                entry = protect_video(protector, job.source, job.output, progress=progress)
            else:
                entry = protector.protect_photo(job.source, job.output)
            writer.write(entry | {"mask": person.describe(), "settings": _settings_dict(settings)})
        bar.close()
        entries = writer.entries
    if not quiet:
        print(summary(entries, report_path, time.perf_counter() - start))
        for note in notes:
            print(f"  note: {note}")
    return entries


def _settings_dict(settings: ProtectSettings) -> dict:
    d = asdict(settings)
    d["jpeg_qualities"] = list(settings.jpeg_qualities)
    return d
