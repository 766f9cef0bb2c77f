"""Robust reading of real photos into upright 8-bit RGB arrays, with a record of what was done to them.

:func:`read_photo` opens a file read-only and returns ``(rgb uint8 HxWx3, PhotoInfo)``:

- EXIF orientation is applied (``ImageOps.exif_transpose``): the array is the photo as a viewer shows it, and all
  coordinates the project records ("source coordinates") refer to this upright array.
- Grayscale / bilevel / palette / YCbCr / LAB / HSV images are converted to RGB.
- Transparency (RGBA, LA, palette with a transparent colour) is composited on WHITE, then dropped: transparent
  regions of cut-out portraits become a neutral white background instead of the arbitrary colour stored under
  alpha 0.
- An embedded ICC profile (e.g. Display P3 phone photos, Adobe CMYK JPEGs) is converted to sRGB with LittleCMS
  when Pillow has it (``icc=False`` ignores profiles); CMYK without a profile uses Pillow's plain conversion.
- 16-bit images are scaled to 8 bits (``v / 257``, rounded; 16-bit RGB is decoded by Pillow from the high byte).
  32-bit integer and float images are scaled from their bit depth or stretched from their value range (noted).
- Multi-frame files (GIF, TIFF) give their first frame (noted).
- Anything that cannot be read raises :class:`PhotoError` with ``outcome`` one of ``not_an_image`` (no decoder
  recognises the content: a text file named .jpg, an empty file), ``unreadable`` (a recognised image that cannot be
  decoded: truncated, corrupt, unsupported variant, permission denied) or ``too_large`` (over the pixel limit of
  :mod:`opom.data.inputs`, checked before decoding); with ``policy=True`` (the commands) also ``unsupported``: a
  photo outside the one input policy of :mod:`opom.data.inputs` (palette, animated, ...).

Huge photos are read at full resolution; :func:`detection_view` makes the downscaled copy used for face detection
and :func:`to_full_resolution` maps points found on it back to the full-resolution (source) coordinates.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from opom.errors import DatasetError

PHOTO_OUTCOMES = ("not_an_image", "unreadable", "too_large", "unsupported")

# magic bytes of image formats: a file that starts like this but does not decode is `unreadable`, not `not_an_image`
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
    (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"II+\x00", "BigTIFF"), (b"MM\x00+", "BigTIFF"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000"),
)
_FTYP_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"msf1": "HEIF", b"avif": "AVIF", b"hevc": "HEIC"}
FIXES = {"HEIC": "pip install pillow-heif (and register it) or convert the file to JPEG",
          "HEIF": "pip install pillow-heif (and register it) or convert the file to JPEG",
          "AVIF": "use Pillow >= 11.2 built with AVIF, or convert the file to JPEG"}


class PhotoError(DatasetError):
    """A file that cannot be used as a photo. ``outcome``: one of :data:`PHOTO_OUTCOMES`."""

    def __init__(self, path: str, outcome: str, reason: str):
        self.path, self.outcome, self.reason = str(path), outcome, reason
        super().__init__(f"{self.path}: {reason}")


@dataclass
class PhotoInfo:
    """What :func:`read_photo` found and did. ``width``/``height`` are those of the returned (upright) array."""

    path: str
    format: str | None
    mode: str
    width: int
    height: int
    stored_width: int
    stored_height: int
    exif_orientation: int = 1
    bit_depth: int = 8
    frames: int = 1
    alpha: str | None = None  # "composited_on_white" when transparency was flattened
    icc: str | None = None  # "converted_to_srgb", "srgb", "ignored: <why>" or None (no profile)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def sniff_format(data: bytes) -> str | None:
    """The image format that ``data`` starts like, or None."""
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp":
        return _FTYP_BRANDS.get(data[8:12], "ISO media")
    return None


def read_photo(path: str | Path, icc: bool = True, policy: bool = False) -> tuple[np.ndarray, PhotoInfo]:
    """``(rgb uint8 HxWx3, info)`` for an image file; raises :class:`PhotoError` for anything unusable.

    The file is only ever opened for reading. ``policy``: refuse photos outside the commands' input policy
    (:func:`opom.data.inputs.policy_reason`); without it any image Pillow decodes is read (datasets of crops).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except IsADirectoryError as err:
        raise PhotoError(path, "not_an_image", "is a folder, not an image file") from err
    except OSError as err:
        raise PhotoError(path, "unreadable", f"cannot read the file ({err.strerror or err}); check it exists and "
                                             "that you may read it") from err
    return read_photo_bytes(data, name=str(path), icc=icc, policy=policy)


def read_photo_bytes(data: bytes, name: str = "<bytes>", icc: bool = True, policy: bool = False
                     ) -> tuple[np.ndarray, PhotoInfo]:
    """:func:`read_photo` for the encoded bytes of a file (``name`` is used in messages)."""
    from opom.data.inputs import open_image, quiet_pillow

    img = open_image(data, name, policy=policy)
    sniffed = sniff_format(data)
    try:
        with quiet_pillow():
            return _decode(img, name, icc)
    except PhotoError:
        raise
    except MemoryError as err:
        raise PhotoError(name, "too_large", "not enough memory to decode this image; use fewer workers") from err
    except Exception as err:  # noqa: BLE001 - decoders raise anything (OSError, ValueError, struct.error, ...)
        what = f"a {sniffed} file" if sniffed else "an image"
        raise PhotoError(name, "unreadable", f"{what} that cannot be decoded ({type(err).__name__}: {err}); it is "
                                             "probably truncated or corrupt: re-export or re-download it") from err


def _decode(img: Image.Image, name: str, icc: bool) -> tuple[np.ndarray, PhotoInfo]:
    from opom.data.inputs import load_image

    notes = []
    fmt, mode = img.format, img.mode
    stored_w, stored_h = img.size
    frames = int(getattr(img, "n_frames", 1) or 1)
    if frames > 1:
        notes.append(f"{frames} frames; the first one is used")
    bit_depth = _bit_depth(img)
    load_image(img, name)
    orientation = 1
    try:
        orientation = int(img.getexif().get(0x0112, 1) or 1)
        img = ImageOps.exif_transpose(img)
    except Exception as err:  # noqa: BLE001 - malformed EXIF: keep the stored orientation
        notes.append(f"EXIF orientation ignored ({type(err).__name__}: {err})")
    img, alpha = _flatten_alpha(img)
    img, icc_note = _to_srgb(img, icc)
    rgb = _to_rgb_array(img, bit_depth, notes)
    info = PhotoInfo(path=name, format=fmt, mode=mode, width=rgb.shape[1], height=rgb.shape[0],
                     stored_width=stored_w, stored_height=stored_h, exif_orientation=orientation,
                     bit_depth=bit_depth, frames=frames, alpha=alpha, icc=icc_note, notes=notes)
    return rgb, info


def _bit_depth(img: Image.Image) -> int:
    if img.mode.startswith("I;16"):
        return 16
    if img.mode in ("I", "F"):
        bits = getattr(img, "tag_v2", {}).get(258) if hasattr(img, "tag_v2") else None
        if isinstance(bits, tuple):
            bits = bits[0] if bits else None
        return int(bits) if bits else (16 if img.format == "PNG" else 32)
    raw = [t.args[0] if isinstance(t.args, tuple) else t.args for t in getattr(img, "tile", []) or []]
    if any(isinstance(r, str) and ";16" in r for r in raw):
        return 16
    return 1 if img.mode == "1" else 8


def _flatten_alpha(img: Image.Image) -> tuple[Image.Image, str | None]:
    """Composite transparency on white: RGBA, LA, PA, La, RGBa and palette images with a transparent colour."""
    has_alpha = img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info)
    if not has_alpha:
        return img, None
    if img.mode == "La":
        img = img.convert("LA")
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    flat = Image.alpha_composite(white, rgba).convert("RGB")
    flat.info = {k: v for k, v in img.info.items() if k == "icc_profile"}
    return flat, "composited_on_white"


def _to_srgb(img: Image.Image, use_icc: bool) -> tuple[Image.Image, str | None]:
    profile = img.info.get("icc_profile")
    if not profile:
        return img, None
    if not use_icc:
        return img, "ignored: icc=False"
    if img.mode not in ("RGB", "CMYK"):
        return img, f"ignored: profile on a {img.mode} image"
    try:
        from PIL import ImageCms

        src = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        description = (ImageCms.getProfileDescription(src) or "").strip()
        if img.mode == "RGB" and "srgb" in description.lower().replace(" ", ""):
            return img, "srgb"
        out = ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        return out, f"converted_to_srgb (from {description or 'an unnamed profile'})"
    except Exception as err:  # noqa: BLE001 - broken profile or no LittleCMS: plain conversion
        return img, f"ignored: {type(err).__name__}: {err}"


def _to_rgb_array(img: Image.Image, bit_depth: int, notes: list[str]) -> np.ndarray:
    mode = img.mode
    if mode == "RGB":
        return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(img).astype(np.float64)
        finite = values[np.isfinite(values)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        if mode == "F" and lo >= 0 and hi <= 1:
            grey = values * 255.0
        elif lo >= 0 and hi <= 65535 and bit_depth <= 16:
            grey = values / 257.0
        elif lo >= 0 and hi <= 255 and mode != "F":
            grey = values
        else:
            grey = (values - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(values)
            notes.append(f"{mode} values {lo:g}..{hi:g} stretched to 0..255")
        grey = np.nan_to_num(grey, nan=0.0, posinf=255.0, neginf=0.0)
        grey = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    if mode == "1":
        img = img.convert("L")
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))


def detection_view(rgb: np.ndarray, max_side: int | None) -> tuple[np.ndarray, tuple[float, float]]:
    """A copy no larger than ``max_side`` on its longer side (area-averaged) and its ``(sx, sy)`` scale.

    ``(sx, sy) == (1, 1)`` and the array itself when it is small enough. Map points back with
    :func:`to_full_resolution`.
    """
    h, w = rgb.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return rgb, (1.0, 1.0)
    factor = max_side / max(h, w)
    nw, nh = max(1, round(w * factor)), max(1, round(h * factor))
    small = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.BOX))
    return small, (nw / w, nh / h)


def to_full_resolution(points, scale: tuple[float, float]) -> np.ndarray:
    """Points (x, y) on a :func:`detection_view` copy mapped to the full-resolution photo (pixel centres)."""
    p = np.asarray(points, dtype=np.float64)
    sx, sy = scale
    return np.stack([(p[..., 0] + 0.5) / sx - 0.5, (p[..., 1] + 0.5) / sy - 0.5], axis=-1)
