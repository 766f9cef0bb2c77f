"""Which input files the commands take: ONE policy for ``opom-prepare``, ``opom enroll``, ``protect`` and ``check``.

Paths (:func:`walk`):

- a file given on the command line is taken as it is (a link too: you named it);
- a folder is walked recursively, in sorted order. Inside it, hidden files and folders (a name starting with '.')
  are skipped, and so are links that lead outside the folder given (to a file or a folder): nothing about what they
  point to is read or recorded, not even its size. A link to a folder inside the input is not followed (its files
  are reached through the folder itself);
- videos (``.mp4 .mov .m4v .mkv``) are taken by ``protect`` only;
- a folder in which nothing is left (e.g. a folder named ``x.jpg``) is named as skipped;
- every skipped path is returned with its reason: the commands print them and record them in their report or
  manifest. Which file is a photo is decided by its content when it is opened, never by its name.

Photos (:func:`open_image`, one decision for every command, because ``protect`` must be able to write every photo
the others take back in its own format, mode and bit depth):

- formats: JPEG (and the first picture of an MPO), PNG, WebP, TIFF, BMP;
- modes: RGB, RGBA, grey (L), grey + alpha (LA), 16-bit grey, 16-bit RGB / RGBA PNG, CMYK (JPEG, TIFF);
- refused, with the fix: palette images (GIF, 8-bit PNG/BMP), 1-bit, 32-bit integer or float, LAB / YCbCr / HSV,
  16-bit colour TIFF, animated or multi-page files, HEIC / AVIF that this Pillow cannot decode;
- pixel limit (:data:`DEFAULT_MAX_PIXELS`, ``--max-pixels`` on every command): a larger image is ``too_large``
  before it is decoded (a decompression bomb declares a huge size in a tiny file), with one message everywhere.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from opom.errors import UserError

PHOTO_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "TIFF", "BMP")
PHOTO_MODES = ("RGB", "RGBA", "L", "LA", "I;16", "I;16B", "I;16L", "CMYK")
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv")
DEFAULT_MAX_PIXELS = 200_000_000  # 200 MP: above any camera's single photo; ~0.6 GB as 8-bit RGB
CONVERT = "convert it to an RGB JPEG or PNG first"
_MODE_FIXES = {
    "P": "a palette (indexed-colour) image cannot hold a mask; " + CONVERT,
    "PA": "a palette (indexed-colour) image cannot hold a mask; " + CONVERT,
    "1": "a 1-bit (black and white) image cannot hold a mask; " + CONVERT,
    "I": "32-bit integer images are not supported; " + CONVERT,
    "F": "floating-point images are not supported; " + CONVERT,
}


@dataclass(frozen=True)
class Skipped:
    """A path the command does not take, and why (``outcome`` as in the reports)."""

    path: str
    outcome: str  # ignored | unsupported | not_found
    reason: str

    def to_entry(self) -> dict:
        return {"source": self.path, "output": None, "outcome": self.outcome, "reason": self.reason}


@dataclass(frozen=True)
class Found:
    """A file to process: a photo candidate or a video; ``root`` is the folder given (None for a file given)."""

    path: Path
    root: Path | None
    kind: str  # photo | video

    @property
    def relative(self) -> Path:
        return self.path.relative_to(self.root) if self.root is not None else Path(self.path.name)


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root)
    except (ValueError, OSError, RuntimeError):
        return False
    return True


def link_reason(path: Path, root: Path) -> str | None:
    """Why a link met while walking ``root`` (resolved) is not followed, or None (not a link, or a link to a file
    inside ``root``). Never reads the target."""
    if not path.is_symlink():
        return None
    if not _inside(path, root):
        return "a link to outside the input folder (not followed)"
    if path.is_dir():
        return "a link to a folder (not followed; its files are reached directly)"
    if not path.exists():
        return "a broken link"
    return None


def classify_entry(path: Path, root: Path) -> Skipped | None:
    """Why a path met while walking ``root`` (resolved) is skipped, or None. Never reads a link's target."""
    why = link_reason(path, root)
    if why is not None:
        return Skipped(str(path), "ignored", why)
    if path.name.startswith("."):
        return Skipped(str(path), "ignored", "hidden (its name starts with '.')")
    return None


def walk(inputs: list[str | Path], videos: bool = False, exclude: list[Path] | None = None,
         skip=None, command: str = "this command") -> tuple[list[Found], list[Skipped]]:
    """The files of ``inputs`` (files and folders) to process, and every path skipped with its reason.

    ``videos``: take video files (``protect``); otherwise they are skipped as videos. ``exclude``: folders (resolved)
    not to walk (an output folder inside the input). ``skip(path) -> reason | None``: more files to leave out
    (earlier outputs). A missing input raises :class:`UserError`.
    """
    if not inputs:
        raise UserError("no input: give photos or folders")
    excluded = [Path(e).resolve() for e in exclude or []]
    found: list[Found] = []
    skipped: list[Skipped] = []

    def take(path: Path, root: Path | None) -> None:
        if skip is not None and (why := skip(path)):
            skipped.append(Skipped(str(path), "ignored", why))
        elif is_video(path):
            if videos:
                found.append(Found(path, root, "video"))
            else:
                skipped.append(Skipped(str(path), "unsupported", f"a video: {command} takes photos"))
        else:
            found.append(Found(path, root, "photo"))

    for raw in inputs:
        path = Path(raw).expanduser()
        if not path.exists():
            raise UserError(f"input {str(path)!r} does not exist" + (" (a broken link)" if path.is_symlink() else ""))
        if not path.is_dir():
            take(path, None)
            continue
        root = path.resolve()
        before = len(found)
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            keep = []
            for d in sorted(dirnames):
                sub = here / d
                if sub.resolve() in excluded and not sub.is_symlink():
                    continue
                why = classify_entry(sub, root)
                if why is None and sub.is_symlink():
                    why = Skipped(str(sub), "ignored", "a link to a folder (not followed)")
                if why is not None:
                    skipped.append(why)
                else:
                    keep.append(d)
            dirnames[:] = keep
            if here != root and not keep and not filenames:
                skipped.append(Skipped(str(here), "ignored", "an empty folder"))
            for name in sorted(filenames):
                file = here / name
                why = classify_entry(file, root)
                if why is not None:
                    skipped.append(why)
                elif not file.is_file():
                    skipped.append(Skipped(str(file), "ignored", "not a regular file (a socket, pipe or device)"))
                else:
                    take(file, root)
        if len(found) == before:
            skipped.append(Skipped(str(path), "ignored", "a folder with no file to take"))
    return found, skipped


def describe_skipped(skipped: list[Skipped], limit: int | None = None) -> list[str]:
    """One line per skipped path (``limit``: at most that many, then a count)."""
    lines = [f"skipped {s.path}: {s.reason}" for s in skipped]
    if limit is not None and len(lines) > limit:
        lines = lines[:limit] + [f"... and {len(lines) - limit} more (see the report)"]
    return lines


# ------------------------------------------------------------------------------------------------ pixel limit

_MAX_PIXELS = [DEFAULT_MAX_PIXELS]


def max_pixels() -> int:
    return _MAX_PIXELS[0]


def set_max_pixels(value: int | None) -> int:
    """Set the pixel limit of every photo opened in this process (None: the default); returns it."""
    value = DEFAULT_MAX_PIXELS if value is None else int(value)
    if value < 1:
        raise UserError(f"the pixel limit must be >= 1, got {value}")
    _MAX_PIXELS[0] = value
    return value


def megapixels(text: str) -> int:
    """``--max-pixels`` values: megapixels (``250``, ``12.5``) -> pixels."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"not a number of megapixels: {text!r}") from None
    if not value > 0:
        raise ValueError(f"the pixel limit must be > 0 megapixels, got {text}")
    return int(value * 1_000_000)


def too_large_reason(width: int, height: int, limit: int | None = None) -> str:
    limit = max_pixels() if limit is None else limit
    return (f"{width}x{height} pixels ({width * height / 1e6:.0f} MP) is over the limit of {limit / 1e6:g} MP (a "
            f"decompression bomb declares a huge size in a small file): downscale the photo, or raise the limit "
            f"with --max-pixels {max(1, round(width * height / 1e6 + 0.5))} if you trust it")


@contextlib.contextmanager
def quiet_pillow():
    """Pillow's warnings (corrupt EXIF, truncated reads) go to the outcome and its reason, not to stderr."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="PIL")
        warnings.filterwarnings("ignore", message=".*(EXIF|Exif|exif|Truncated|truncated).*")
        yield


@contextlib.contextmanager
def _pillow_size_check_off():
    """Pillow's own limit warns or raises with a message naming a Python setting; this module checks instead."""
    from PIL import Image

    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings(), quiet_pillow():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


# ------------------------------------------------------------------------------------------------ opening


def sixteen_bit_colour(img) -> bool:
    """True for a 16-bit-per-channel RGB / RGBA file, which Pillow decodes as 8-bit RGB / RGBA."""
    raw = [t.args[0] if isinstance(t.args, tuple) else t.args for t in getattr(img, "tile", None) or []]
    return img.mode in ("RGB", "RGBA") and any(isinstance(r, str) and ";16" in r for r in raw)


def policy_reason(img) -> tuple[str, str] | None:
    """``(outcome, reason)`` when an opened (not yet decoded) image is not a photo the commands take, else None."""
    fmt = img.format or ""
    if fmt not in PHOTO_FORMATS:
        what = f"{fmt} images" if fmt else "this image format"
        why = "palette images cannot hold a mask" if fmt == "GIF" else "cannot keep a mask in their own format"
        return "unsupported", f"{what}: {why}; {CONVERT}"
    frames = int(getattr(img, "n_frames", 1) or 1)
    if frames > 1 and fmt != "MPO":
        kind = "multi-page" if fmt == "TIFF" else "animated"
        return "unsupported", f"an {kind} {fmt} ({frames} frames): export the frame you want as a JPEG or PNG first"
    mode = img.mode
    if mode in _MODE_FIXES:
        return "unsupported", f"{fmt} in mode {mode}: {_MODE_FIXES[mode]}"
    if mode not in PHOTO_MODES:
        return "unsupported", f"{fmt} in mode {mode} is not supported: {CONVERT}"
    if mode == "CMYK" and fmt not in ("JPEG", "TIFF", "MPO"):
        return "unsupported", f"a CMYK {fmt} is not supported: {CONVERT}"
    if sixteen_bit_colour(img) and fmt != "PNG":
        return "unsupported", f"a 16-bit colour {fmt} cannot be written back at 16 bits: save it as a 16-bit PNG"
    return None


def open_image(data: bytes, name: str, policy: bool = True):
    """Open encoded bytes with Pillow (header only: nothing decoded yet) after the size check, and, with ``policy``,
    the photo policy. Raises :class:`~opom.data.photos.PhotoError` (``not_an_image``, ``unreadable``,
    ``too_large``, ``unsupported``)."""
    from PIL import Image, UnidentifiedImageError

    from opom.data.photos import FIXES, PhotoError, sniff_format

    if not data:
        raise PhotoError(name, "not_an_image", "empty file (0 bytes)")
    sniffed = sniff_format(data)
    try:
        with _pillow_size_check_off():
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as err:
        if sniffed in FIXES:
            raise PhotoError(name, "unreadable", f"a {sniffed} photo, which this Pillow cannot decode: "
                                                 f"{FIXES[sniffed]}") from err
        if sniffed:
            raise PhotoError(name, "unreadable", f"starts like a {sniffed} file but cannot be decoded; it is "
                                                 "probably truncated or corrupt: re-export or re-download it") from err
        raise PhotoError(name, "not_an_image", "not an image file (no decoder recognises it)") from err
    except Exception as err:  # noqa: BLE001 - header parsers raise anything on corrupt data
        what = f"a {sniffed} file" if sniffed else "an image"
        raise PhotoError(name, "unreadable", f"{what} whose header cannot be read ({type(err).__name__}: {err}); "
                                             "it is probably truncated or corrupt") from err
    width, height = img.size
    if width * height > max_pixels():
        raise PhotoError(name, "too_large", too_large_reason(width, height))
    if policy:
        try:
            refused = policy_reason(img)
        except Exception as err:  # noqa: BLE001 - counting frames reads the file: corrupt data raises anything
            raise PhotoError(name, "unreadable", f"cannot be read ({type(err).__name__}: {err}); it is probably "
                                                 "truncated or corrupt") from err
        if refused:
            raise PhotoError(name, *refused)
    return img


def load_image(img, name: str) -> None:
    """Decode an opened image (Pillow's size check off: :func:`open_image` did it)."""
    with _pillow_size_check_off():
        img.load()


def check_output_folder(folder: str | Path, what: str = "output folder") -> Path:
    """Fail early, with one line, when ``folder`` cannot hold outputs: a file, or not writable. Creates it."""
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"the {what} {str(folder)!r} is a file, not a folder: give a folder (it is created)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".opom-write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise UserError(f"cannot write to the {what} {str(folder)!r} ({err.strerror or err}): choose a folder you "
                        "may write to") from err
    return folder


def check_input_file(path: str | Path, what: str, fix: str) -> Path:
    """A file the user names for an option (a mask, weights): it exists and is a file, else one line with ``fix``."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{what} {str(path)!r} is a folder, not a file: {fix}")
    if not path.exists():
        raise UserError(f"{what} {str(path)!r} does not exist: {fix}")
    return path
