"""``protect``: photos, folders and videos -> protected copies carrying a person's mask.

For every face chosen in a photo (all, the largest, or those matching the enrolled person), the 5 landmarks give
the similarity ``M`` onto the mask's template; the mask is added in that aligned space by warping it back with the
inverse transform onto the photo at its original resolution, blended into the face's footprint only (feathered
edge, :mod:`opom.cloak.blend`), and the result is quantised once to the file's bit depth. The copy keeps the
original's format, size, mode, bit depth, orientation, colour profile and metadata (:mod:`opom.cloak.photofile`),
or is written as PNG / JPEG (``output_format``). Grey photos (grey modes, or RGB whose channels are equal) get the
mask's luminance version, added equally to every channel, so they stay grey.

Lossy formats are re-encoded, which changes pixels all over the photo a little (JPEG: up to ~12 grey levels, most
by 0-3, and files 25-40 % larger than a camera JPEG; experiments/benchmarks/cloak_throughput.md): a JPEG first tries
its own quantisation tables and chroma subsampling (when they are as fine as the first quality at 4:4:4), then
``jpeg_qualities`` at 4:4:4; the first at which the mask survives is kept: the perturbation measured in each aligned
face after decoding must have a cosine of at least ``min_survival`` with the lossless one.

Originals are only ever read. Outputs are written atomically, never onto an input; an existing output is left
alone unless ``overwrite`` (an output of an earlier run with the same source, mask and settings is ``done``).
Every input path gets one line in the report (:mod:`opom.cloak.report`), skipped ones included.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from opom.cloak import photofile as pf
from opom.cloak.blend import add_perturbation, aligned_change, combine, face_field, feather_alpha, retention
from opom.cloak.faces import CHOICES, DetectSettings, Face, FaceMatcher, choose_faces, detect_faces
from opom.cloak.mask import PersonMask, load_person_mask
from opom.cloak.report import OK_OUTCOMES, REPORT_NAME, ReportWriter, read_report, summary
from opom.data.alignment import similarity_transform, warp_to_template
from opom.data.inputs import VIDEO_SUFFIXES, check_output_folder, set_max_pixels, walk
from opom.data.photos import PhotoError
from opom.errors import UserError
from opom.hashing import sha256_file

MATCH_TEMPLATE = "arcface_112"  # recognition models of the zoo take canonical 112x112 crops
DEFAULT_QUALITIES = (95, 97, 99, 100)
OUTPUT_FORMATS = ("same", "png", "jpeg")


@dataclass(frozen=True)
class ProtectSettings:
    """How faces are chosen and protected, and how copies are written."""

    choose: str = "match"  # all | largest | match (needs the embedding that `opom enroll` stores)
    template: str | None = None  # None: the mask's own (its canvas)
    refine: int = 0  # per-photo refinement steps on each face (photos only; 0: the universal mask as it is)
    refine_eps: float | None = None  # budget of the refinement in grey levels (default: the mask's eps)
    feather: float = 6.0  # crop pixels over which the mask fades out at the edge of the face region
    detect: DetectSettings = field(default_factory=DetectSettings)
    output_format: str = "same"  # same | png (lossless) | jpeg
    jpeg_qualities: tuple[int, ...] = DEFAULT_QUALITIES  # tried in order (lossy formats)
    jpeg_keep_original: bool = True  # a JPEG first tries its own quantisation tables and subsampling
    min_survival: float = 0.98
    strip_location: bool = False
    overwrite: bool = False
    suffix: str = "_protected"  # output name next to the input when no output folder is given
    max_pixels: int | None = None  # larger photos are too_large (None: opom.data.inputs.DEFAULT_MAX_PIXELS)
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
        if self.output_format not in OUTPUT_FORMATS:
            raise UserError(f"output format must be one of {', '.join(OUTPUT_FORMATS)}, got {self.output_format!r}")
        if not self.jpeg_qualities or not all(1 <= int(q) <= 100 for q in self.jpeg_qualities):
            raise UserError(f"JPEG qualities must lie in 1..100, got {list(self.jpeg_qualities)}")
        if not 0 <= self.min_survival <= 1:
            raise UserError(f"min_survival must lie in [0, 1], got {self.min_survival}")
        if not self.suffix:
            raise UserError("the output suffix must not be empty (the copy would replace the original)")
        if self.detect_every < 1:
            raise UserError(f"detect_every must be >= 1 frame, got {self.detect_every}")
        if self.refine < 0:
            raise UserError(f"refine must be >= 0 steps, got {self.refine}")
        if self.refine_eps is not None and not self.refine_eps > 0:
            raise UserError(f"refine eps must be > 0 grey levels, got {self.refine_eps}")
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
    """A person's mask ready to be applied: detector, face choice and the perturbation of chosen faces.

    The detector (``settings.detect``) and the recognition model of ``match`` are built once, here and on first
    use, and serve every photo and frame of the run.
    """

    def __init__(self, person: PersonMask, settings: ProtectSettings = ProtectSettings(), detector=None,
                 matcher: FaceMatcher | None = None, device: str = "cpu"):
        self.person, self.settings = person, settings.validate()
        if settings.choose == "match" and matcher is None and person.match is None:
            raise UserError(f"mask file {person.path!r} holds no enrolment embedding for --choose match (it was not "
                            "made by `opom enroll`): use --choose largest or --choose all")
        self.detector = detector if detector is not None else settings.detect.build(device)
        self._matcher = matcher
        fh, fw = person.delta.shape[:2]
        alpha = feather_alpha(fw, fh, settings.feather)[..., None]
        self.intended = person.delta * alpha
        self.intended_luminance = None if person.luminance is None else np.repeat(person.luminance * alpha, 3, 2)
        self._alpha = alpha
        self._refiner = None

    @property
    def refiner(self):
        """Per-photo refinement (``settings.refine`` steps), built on first use (it needs torch and the surrogates)."""
        if self._refiner is None:
            from opom.cloak.refining import PhotoRefiner

            self._refiner = PhotoRefiner(self.person, self.settings.refine, self.settings.refine_eps)
        return self._refiner
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

    def perturbation(self, landmarks: list[np.ndarray], image_hw: tuple[int, int], luminance: bool = False,
                     deltas: list[np.ndarray] | None = None):
        """The combined :class:`~opom.cloak.blend.Perturbation` of faces with these landmarks (None: none);
        ``deltas``: one aligned mask per face (refined), instead of the person's mask for all."""
        delta = self.person.luminance if luminance and self.person.luminance is not None else self.person.delta
        deltas = deltas or [delta] * len(landmarks)
        fields = [face_field(m, d, image_hw, self.settings.feather)
                  for m, d in zip(self.matrices(landmarks), deltas, strict=True)]
        return combine(fields)

    def apply(self, pixels: np.ndarray, landmarks: list[np.ndarray], levels: float = 255.0, colour: str = "rgb",
              luminance: bool = False, deltas: list[np.ndarray] | None = None) -> np.ndarray:
        """``pixels`` (upright, H x W [x C], uint8/uint16) with the mask added to the faces at ``landmarks``.

        ``colour``: rgb, grey or cmyk (what the channels are); ``luminance``: use the mask's luminance version (grey
        photos; it is added equally to R, G and B); ``deltas``: per-face refined masks.
        """
        p = self.perturbation(landmarks, pixels.shape[:2], luminance, deltas)
        if p is None:
            return pixels.copy()
        return add_perturbation(pixels, p, levels, colour)

    def measure(self, before_rgb: np.ndarray, after_rgb: np.ndarray, landmarks, luminance: bool = False,
                delta: np.ndarray | None = None) -> dict:
        """What the aligned crop of a face shows of the change: max |change| (grey levels) and retention (against
        ``delta``, the face's refined mask, when given)."""
        change = aligned_change(before_rgb, after_rgb, landmarks, self.person.template)
        intended = self.intended_luminance if luminance and self.intended_luminance is not None else self.intended
        if delta is not None:
            intended = delta * self._alpha
        return {"aligned_max_change": int(np.abs(change).max()), "retention": round(retention(change, intended), 4)}

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
        except OSError as err:
            entry |= {"outcome": "unwritable", "reason": f"cannot write {output} ({err.strerror or err}); the "
                                                         "original is untouched"}
        except Exception as err:  # noqa: BLE001 - one bad file never stops a batch
            entry |= {"outcome": "error", "reason": f"{type(err).__name__}: {err}",
                      "traceback": traceback.format_exc(limit=6)}
        entry["time_s"] = round(time.perf_counter() - start, 4)
        return entry

    def _protect_photo(self, source: Path, output: Path) -> dict:
        if output.exists() and not self.settings.overwrite:
            return {"outcome": "exists", "reason": f"{output} exists and is not an output of this mask and settings "
                                                   "for this photo; --overwrite replaces it"}
        photo = pf.convert_target(pf.load_stored(source), self.settings.output_format)
        rgb = photo.display_rgb8()
        h, w = rgb.shape[:2]
        grey = photo.colour == "grey" or (photo.colour == "rgb" and pf.looks_grey(rgb))
        use_luminance = grey and self.person.luminance is not None
        entry: dict = {"format": photo.format, "mode": photo.mode, "size": [w, h], "orientation": photo.orientation,
                       "sha256": photo.sha256, "grey": grey, "mask_kind": "luminance" if use_luminance else "colour",
                       "notes": list(photo.notes)}
        if grey and not use_luminance:
            entry["warning"] = ("a grey photo, but this mask file has no luminance mask (enrolled with an older "
                                "opom): the colour mask loses much of its effect in grey and "
                                + ("adds colour to the photo" if photo.colour == "rgb" else "is added as its luma")
                                + "; enroll again")
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
        deltas = None
        if self.settings.refine and not use_luminance:
            t1 = time.perf_counter()
            deltas = [self.refiner.refine(rgb, lm) for lm in landmarks]
            entry["refined"] = {"steps": self.settings.refine, "eps": self.refiner.eps,
                                "seconds": round(time.perf_counter() - t1, 2)}
        display = self.apply(photo.display(), landmarks, photo.levels, photo.colour, use_luminance, deltas)
        stored = np.ascontiguousarray(pf.to_stored(display, photo.orientation))
        lossless_rgb = pf.as_rgb8(display, photo.mode)
        data, written, codec = self._encode(photo, stored, rgb, lossless_rgb, landmarks)
        after = pf.as_rgb8(pf.to_display(written, photo.orientation), photo.mode)
        faces = []
        for k, (i, lm, m) in enumerate(zip(choice.chosen, landmarks, self.matrices(landmarks), strict=True)):
            faces.append({"face": i, "transform": np.round(m, 6).tolist(),
                          **self.measure(rgb, after, lm, use_luminance, None if deltas is None else deltas[k])})
        if source.resolve() == output.resolve():  # also guarded when planning; never write onto an original
            raise UserError(f"refusing to overwrite the original {source}")
        pf.atomic_write(output, data)
        st = output.stat()
        return entry | codec | {"outcome": "protected", "reason": None, "output": str(output),
                                "output_size": st.st_size, "output_mtime_ns": st.st_mtime_ns,
                                "protected_faces": faces, "strip_location": self.settings.strip_location}

    def _encode(self, photo: pf.StoredPhoto, stored: np.ndarray, rgb: np.ndarray, lossless_rgb: np.ndarray,
                landmarks) -> tuple[bytes, np.ndarray, dict]:
        """Encode the protected pixels; lossy formats with the first encoding at which the mask survives."""
        strip = self.settings.strip_location
        if photo.lossless or photo.format not in pf.LOSSY:
            data = pf.encode(photo, stored, strip_location=strip)
            written = pf.decode_pixels(data, photo.mode)
            if written.shape != stored.shape or not np.array_equal(written, stored):
                raise RuntimeError(f"the {photo.format} encoder did not keep the pixels exactly")
            return data, written, {"lossless": True, "bytes": len(data)}
        base = [aligned_change(rgb, lossless_rgb, lm, self.person.template) for lm in landmarks]
        tried = []
        for enc in pf.encodings(photo, self.settings.jpeg_qualities, self.settings.jpeg_keep_original):
            data = pf.encode(photo, stored, quality=enc, strip_location=strip)
            written = pf.decode_pixels(data, photo.mode)
            after = pf.as_rgb8(pf.to_display(written, photo.orientation), photo.mode)
            survival = min(retention(aligned_change(rgb, after, lm, self.person.template), b)
                           for lm, b in zip(landmarks, base, strict=True))
            tried.append({"encoding": enc.describe(), "quality": enc.quality, "survival": round(survival, 4),
                          "bytes": len(data)})
            if survival >= self.settings.min_survival:
                break
        last = tried[-1]
        codec = {"lossless": False, "quality": last["quality"] if last["quality"] is not None else "original",
                 "encoding": last["encoding"], "survival": last["survival"], "bytes": last["bytes"],
                 "qualities_tried": tried}
        if last["survival"] < self.settings.min_survival:
            codec["warning"] = (f"the mask survives encoding only at {last['survival']:.3f} < min_survival "
                                f"{self.settings.min_survival}; --format png writes a lossless copy")
        return data, written, codec


def build_matcher(person: PersonMask, cache_dir: str | Path | None = None) -> FaceMatcher:
    """The recognition model and enrolment embedding stored in the mask file by ``opom enroll``.

    The bundled SFace runs through OpenCV (no torch); other zoo models through the zoo.
    """
    from opom.cloak.faces import SFaceRunner, is_plain_sface

    info = person.match
    if info is None:
        raise UserError(f"mask file {person.path!r} holds no enrolment embedding: use --choose largest or all")
    spec = dict(info["model"])
    if is_plain_sface(spec):
        model = SFaceRunner()
    else:
        from opom.models.zoo import build_face_model

        model = build_face_model(spec, cache_dir=cache_dir)
    return FaceMatcher(model, info["embedding"], float(info["threshold"]), name=spec.get("name", ""))


# ------------------------------------------------------------------------------------------- planning


@dataclass
class Job:
    source: Path
    output: Path
    kind: str  # photo | video
    in_folder: bool = False  # found by walking a folder (not named on the command line)


def kind_of(path: Path) -> str:
    return "video" if path.suffix.lower() in VIDEO_SUFFIXES else "photo"


def output_name(path: Path, output_format: str = "same", suffix: str = "") -> str:
    """The file name of ``path``'s copy: ``<stem><suffix><ext>``, the extension changed for --format png / jpeg."""
    ext = path.suffix
    if kind_of(path) == "photo" and output_format != "same":
        wanted = pf.SUFFIXES[output_format.upper()]
        ext = ext if ext.lower() in ((".jpg", ".jpeg", ".jpe", ".jfif") if wanted == ".jpg" else (wanted,)) \
            else wanted
    return f"{path.stem}{suffix}{ext}"


def plan(inputs: list[str | Path], out_dir: str | Path | None, suffix: str = "_protected",
         output_format: str = "same", report: Path | None = None) -> tuple[list[Job], list]:
    """The jobs for files and folders (:func:`opom.data.inputs.walk`: one policy for every command) and the paths
    skipped, each with its reason.

    With ``out_dir`` a file goes to ``out_dir/<name>`` and a folder's files to ``out_dir/<path in the folder>``;
    without, next to the input as ``<stem><suffix><ext>`` (earlier outputs, named so, are skipped as such).
    Raises :class:`UserError` if an output would be an input or two inputs would share an output.
    """
    out = Path(out_dir).expanduser().resolve() if out_dir is not None else None
    report_path = report.resolve() if report is not None else None

    def earlier_output(path: Path) -> str | None:
        if path.name == REPORT_NAME or (report_path is not None and path.resolve() == report_path):
            return "the protect report"
        if out is None and path.stem.endswith(suffix):
            return f"an earlier protect output (its name ends in {suffix!r})"
        return None

    found, skipped = walk(inputs, videos=True, exclude=[out] if out is not None else None, skip=earlier_output,
                          command="protect")
    jobs: list[Job] = []
    for item in found:
        name = output_name(item.path, output_format, "" if out else suffix)
        if out is not None:
            dst = out / item.relative.with_name(name)
        else:
            dst = item.path.with_name(name)
        jobs.append(Job(item.path, dst, item.kind, in_folder=item.root is not None))
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
    return jobs, skipped


def default_report_path(inputs: list[str | Path], out_dir: str | Path | None) -> Path:
    if out_dir is not None:
        return Path(out_dir).expanduser() / REPORT_NAME
    first = Path(inputs[0]).expanduser()
    return (first if first.is_dir() else first.parent) / REPORT_NAME


def _earlier(report_path: Path) -> dict[str, dict]:
    """The latest ``protected`` / ``done`` entry of each output in an earlier report (resolved output paths)."""
    if not report_path.is_file():
        return {}
    latest = {}
    for e in read_report(report_path):
        if e.get("outcome") in OK_OUTCOMES and e.get("output"):
            latest[str(Path(e["output"]).resolve())] = e
    return latest


def _done(job: Job, earlier: dict[str, dict], mask_id: dict, settings: dict) -> dict | None:
    """The earlier entry when ``job.output`` is that run's output, unchanged, of this source, mask and settings."""
    entry = earlier.get(str(job.output.resolve()))
    if not entry or entry.get("mask") != mask_id or entry.get("settings") != settings:
        return None
    try:
        src, dst = job.source.stat(), job.output.stat()
    except OSError:
        return None
    if entry.get("source_size") != src.st_size or entry.get("output_size") != dst.st_size \
            or entry.get("output_mtime_ns") != dst.st_mtime_ns:
        return None
    if entry.get("source_mtime_ns") != src.st_mtime_ns and entry.get("sha256") != sha256_file(job.source):
        return None
    return entry


def counts_as_failure(entry: dict) -> bool:
    """Whether an entry makes ``opom protect`` exit 1: a photo or video that was not protected. Hidden files,
    links and earlier outputs (``ignored``), and files in folders that are not images at all, do not count."""
    if entry["outcome"] in OK_OUTCOMES or entry["outcome"] == "ignored":
        return False
    return not (entry["outcome"] == "not_an_image" and entry.get("in_folder"))


def protect(inputs: list[str | Path] | str | Path, mask: str | Path | PersonMask, out: str | Path | None = None,
            identity: str | None = None, settings: ProtectSettings = ProtectSettings(),
            report: str | Path | None = None, detector=None, device: str = "cpu", progress: bool = True,
            quiet: bool = False) -> list[dict]:
    """Protect photos, videos and folders with a person's mask; returns the report entries (one per path).

    ``mask``: a mask file from ``opom enroll`` (or a loaded :class:`PersonMask`); ``identity`` picks a person in a
    file with several. ``out``: output folder (default: next to each input, ``<stem>_protected<ext>``).
    ``report``: the JSON-lines report (default ``opom_protect_report.jsonl`` in ``out`` or the first input's folder).
    Entries with an outcome in :data:`~opom.cloak.report.OK_OUTCOMES` succeeded; :func:`counts_as_failure` says
    which of the others mean a photo was not protected.
    """
    from tqdm import tqdm

    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    inputs = list(inputs)
    settings = settings.validate()
    set_max_pixels(settings.max_pixels)
    person = mask if isinstance(mask, PersonMask) else load_person_mask(mask, identity, settings.template)
    if not inputs:
        raise UserError("no input: give photos, videos or folders")
    if out is not None:
        check_output_folder(out)
    report_path = Path(report).expanduser() if report else default_report_path(inputs, out)
    if report_path.is_dir():
        raise UserError(f"the report {str(report_path)!r} is a folder: give a file name (e.g. {REPORT_NAME})")
    jobs, skipped = plan(inputs, out, settings.suffix, settings.output_format, report_path)
    if not jobs and not skipped:
        raise UserError(f"no photos or videos found in {', '.join(map(str, inputs))}")
    check_output_folder(report_path.parent, "report folder")
    if out is None:
        for folder in sorted({j.output.parent for j in jobs}):
            check_output_folder(folder, "folder of the inputs (where the copies go without --out)")
    protector = Protector(person, settings, detector=detector, device=device) if jobs else None
    mask_id, settings_dict = person.describe(), _settings_dict(settings)
    earlier = _earlier(report_path)
    start = time.perf_counter()
    with ReportWriter(report_path) as writer:
        for s in skipped:
            writer.write(s.to_entry() | {"kind": "skipped", "in_folder": True})
        bar = tqdm(jobs, unit="file", desc="protect", disable=not progress or len(jobs) < 2)
        for job in bar:
            before = _done(job, earlier, mask_id, settings_dict) if not settings.overwrite else None
            stat = _stat(job.source)
            if before is not None:
                entry = {"source": str(job.source), "output": str(job.output), "kind": job.kind, "outcome": "done",
                         "reason": "protected by an earlier run with this mask and settings; kept",
                         **{k: before.get(k) for k in ("sha256", "output_size", "output_mtime_ns")}}
            elif job.kind == "video":
                from opom.cloak.video import protect_video

                entry = protect_video(protector, job.source, job.output, progress=progress)
            else:
                entry = protector.protect_photo(job.source, job.output)
            writer.write(entry | stat | {"in_folder": job.in_folder, "mask": mask_id, "settings": settings_dict})
        bar.close()
        entries = writer.entries
    if not quiet:
        print(summary(entries, writer.path if writer.opened else None, time.perf_counter() - start))
    return entries


def _stat(path: Path) -> dict:
    try:
        st = path.stat()
    except OSError:
        return {}
    return {"source_size": st.st_size, "source_mtime_ns": st.st_mtime_ns}


def _settings_dict(settings: ProtectSettings) -> dict:
    d = asdict(settings)
    d["jpeg_qualities"] = list(settings.jpeg_qualities)
    d.pop("overwrite", None)  # how earlier outputs are treated, not how a copy is made
    return d


def exit_status(entries: list[dict]) -> int:
    """0 when every photo and video was protected (or kept from an earlier run), else 1."""
    return 1 if any(counts_as_failure(e) for e in entries) else 0

