"""A photo file's stored pixels and metadata, and writing a protected copy that keeps them.

The protected copy is made from the file's STORED pixels (no colour conversion), so it keeps the original's
format, size, bit depth, colour profile (the same ICC bytes are written back), EXIF (orientation included) and
other metadata (XMP, PNG text, DPI). Faces are found on the upright view (:func:`to_display`, the EXIF orientation
applied), the perturbation is computed there and mapped back with :func:`to_stored`.

Formats: JPEG, PNG, WebP, TIFF, BMP. Lossless ones (PNG, TIFF without JPEG compression, BMP, lossless WebP)
change only the pixels under protected faces; lossy ones (JPEG, lossy WebP) are re-encoded at a quality that the
caller picks so that the mask survives (see :mod:`opom.cloak.protect`). JPEGs are written with 4:4:4 chroma.
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from opom.data.photos import PhotoError, sniff_format

FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "MPO", "BMP")
LOSSY = ("JPEG", "MPO", "WEBP")
# stored modes edited in place; others are converted (noted) or refused
MODES = ("RGB", "RGBA", "L", "LA", "I;16", "I;16B", "I;16L")
GPS_IFD = 0x8825
ORIENTATION = 0x0112


class UnsupportedPhoto(PhotoError):
    """A readable image that cannot be protected in its own format."""


def to_display(stored: np.ndarray, orientation: int) -> np.ndarray:
    """The upright view of ``stored`` (H, W[, C]) for an EXIF orientation, as ``PIL.ImageOps.exif_transpose``."""
    a = stored
    return {1: a, 2: a[:, ::-1], 3: a[::-1, ::-1], 4: a[::-1], 5: a.swapaxes(0, 1),
            6: np.rot90(a, -1), 7: a.swapaxes(0, 1)[::-1, ::-1], 8: np.rot90(a, 1)}.get(orientation, a)


def to_stored(display: np.ndarray, orientation: int) -> np.ndarray:
    """The inverse of :func:`to_display`: an upright array back in the stored orientation."""
    a = display
    return {1: a, 2: a[:, ::-1], 3: a[::-1, ::-1], 4: a[::-1], 5: a.swapaxes(0, 1),
            6: np.rot90(a, 1), 7: a.swapaxes(0, 1)[::-1, ::-1], 8: np.rot90(a, -1)}.get(orientation, a)


@dataclass
class StoredPhoto:
    """The stored pixels of a photo file, and what is needed to write a faithful copy."""

    path: str
    format: str
    mode: str  # the mode of ``pixels`` (after any noted conversion)
    pixels: np.ndarray  # stored orientation: (H, W) or (H, W, C), uint8 or uint16
    orientation: int = 1
    lossless: bool = True
    icc_profile: bytes | None = None
    exif: bytes | None = None
    xmp: bytes | None = None
    dpi: tuple | None = None
    png_text: dict = field(default_factory=dict)
    tiff_compression: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def levels(self) -> float:
        return 65535.0 if self.pixels.dtype == np.uint16 else 255.0

    def display(self) -> np.ndarray:
        return to_display(self.pixels, self.orientation)

    def display_rgb8(self) -> np.ndarray:
        """The upright view as RGB uint8 (grey repeated, alpha dropped, 16 bits rounded to 8): what is aligned."""
        return as_rgb8(self.display())


def as_rgb8(pixels: np.ndarray) -> np.ndarray:
    a = pixels
    if a.dtype == np.uint16:
        a = np.clip(np.rint(a.astype(np.float32) / 257.0), 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[2] in (1, 2):
        a = np.repeat(a[..., :1], 3, axis=2)
    return np.ascontiguousarray(a[..., :3])


def _webp_lossless(data: bytes) -> bool:
    """True for a lossless (VP8L) WebP: the first image chunk is VP8L (a simple or an extended file)."""
    pos = 12
    while pos + 8 <= len(data):
        tag, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        if tag in (b"VP8 ", b"VP8L"):
            return tag == b"VP8L"
        pos += 8 + size + (size & 1)
    return False


def load_stored(path: str | Path) -> StoredPhoto:
    """Read a photo's stored pixels and metadata (read-only). Raises :class:`PhotoError` for unusable files."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError as err:
        raise PhotoError(path, "not_an_image", "is a folder, not an image file") from err
    except OSError as err:
        raise PhotoError(path, "unreadable", f"cannot read the file ({err.strerror or err})") from err
    if not data:
        raise PhotoError(path, "not_an_image", "empty file (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except UnidentifiedImageError as err:
        sniffed = sniff_format(data)
        what = f"starts like a {sniffed} file but cannot be decoded" if sniffed else "not an image file"
        raise PhotoError(path, "unreadable" if sniffed else "not_an_image",
                         f"{what}; re-export it as JPEG or PNG") from err
    except Exception as err:  # noqa: BLE001 - decoders raise anything on corrupt data
        raise PhotoError(path, "unreadable", f"cannot be decoded ({type(err).__name__}: {err}); it is probably "
                                             "truncated or corrupt: re-export or re-download it") from err
    fmt = img.format or ""
    if fmt not in FORMATS:
        raise UnsupportedPhoto(path, "unsupported", f"{fmt or 'this'} images cannot keep a mask in their own format "
                                                    "(palette or exotic codec): convert it to PNG or JPEG first")
    notes: list[str] = []
    if getattr(img, "n_frames", 1) > 1 and fmt not in ("MPO",):
        raise UnsupportedPhoto(path, "unsupported", f"a {img.n_frames}-frame {fmt}: split the frames or convert "
                                                    "to single images first")
    if fmt == "MPO":
        notes.append("MPO (multi-picture JPEG): only the first picture is kept, written as a JPEG")
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        notes.append(f"palette image stored as {img.mode}")
    elif mode == "1":
        img = img.convert("L")
        notes.append("1-bit image stored as 8-bit grey")
    elif mode not in MODES:
        raise UnsupportedPhoto(path, "unsupported", f"{mode} images are not supported: convert it to RGB "
                                                    "(e.g. an sRGB JPEG or PNG) first")
    pixels = np.asarray(img)
    if pixels.dtype.byteorder == ">" or img.mode.startswith("I;16"):
        pixels = pixels.astype(np.uint16)
    orientation = 1
    try:
        orientation = int(img.getexif().get(ORIENTATION, 1) or 1)
    except Exception:  # noqa: BLE001 - malformed EXIF: keep the stored orientation
        notes.append("EXIF could not be parsed; orientation taken as 1")
    if orientation not in range(1, 9):
        orientation = 1
    lossless = fmt not in LOSSY or (fmt == "WEBP" and _webp_lossless(data))
    compression = img.info.get("compression") if fmt == "TIFF" else None
    if fmt == "TIFF" and compression in ("jpeg", "tiff_jpeg"):
        notes.append("JPEG-compressed TIFF written with LZW (lossless)")
        compression = "tiff_lzw"
    text = {k: v for k, v in getattr(img, "text", {}).items() if isinstance(v, str)} if fmt == "PNG" else {}
    xmp = img.info.get("xmp")
    return StoredPhoto(path=str(path), format="JPEG" if fmt == "MPO" else fmt, mode=img.mode, pixels=pixels,
                       orientation=orientation, lossless=lossless, icc_profile=img.info.get("icc_profile"),
                       exif=img.info.get("exif"), xmp=xmp if isinstance(xmp, bytes) else None,
                       dpi=img.info.get("dpi"), png_text=text, tiff_compression=compression, notes=notes)


def exif_without_location(exif: bytes | None) -> bytes | None:
    """The EXIF block with its GPS IFD removed (other tags, orientation included, kept)."""
    if not exif:
        return exif
    ex = Image.Exif()
    ex.load(exif[6:] if exif.startswith(b"Exif\x00\x00") else exif)
    ex.get_ifd(0x8769)  # read the Exif sub-IFD so that it is written back
    if GPS_IFD in ex:
        del ex[GPS_IFD]
    return ex.tobytes()


def encode(photo: StoredPhoto, pixels: np.ndarray, quality: int | None = None, strip_location: bool = False
           ) -> bytes:
    """The encoded file for ``pixels`` (stored orientation) with ``photo``'s format and metadata.

    ``quality`` is used by lossy formats (JPEG 4:4:4; WebP lossy). ``strip_location`` drops EXIF GPS and XMP
    (XMP often repeats the location).
    """
    mode = photo.mode
    if pixels.dtype == np.uint16:
        img = Image.fromarray(pixels.astype(np.uint16))  # mode I;16
    else:
        img = Image.fromarray(pixels, mode=mode if mode in ("RGB", "RGBA", "L", "LA") else None)
    exif = exif_without_location(photo.exif) if strip_location else photo.exif
    xmp = None if strip_location else photo.xmp
    kw: dict = {}
    if photo.icc_profile:
        kw["icc_profile"] = photo.icc_profile
    if exif:
        kw["exif"] = exif
    if photo.dpi and photo.format in ("JPEG", "PNG", "TIFF"):
        kw["dpi"] = tuple(float(d) for d in photo.dpi)
    fmt = photo.format
    if fmt == "JPEG":
        kw.update(quality=int(quality or 95), subsampling=0, optimize=True)
        if xmp:
            kw["xmp"] = xmp
    elif fmt == "WEBP":
        if photo.lossless:
            kw.update(lossless=True, exact=True)
        else:
            kw.update(quality=int(quality or 95), method=4)
        if xmp:
            kw["xmp"] = xmp
    elif fmt == "PNG":
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        for k, v in photo.png_text.items():
            if strip_location and k.startswith("XML:com.adobe.xmp"):
                continue
            info.add_text(k, v)
        kw["pnginfo"] = info
    elif fmt == "TIFF":
        if photo.tiff_compression and photo.tiff_compression != "raw":
            kw["compression"] = photo.tiff_compression
    elif fmt == "BMP":
        kw = {}
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def decode_pixels(data: bytes) -> np.ndarray:
    """The stored pixels of an encoded file (as :func:`load_stored` reads them)."""
    img = Image.open(io.BytesIO(data))
    img.load()
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    pixels = np.asarray(img)
    return pixels.astype(np.uint16) if img.mode.startswith("I;16") else pixels


def _default_mode() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename.

    The file gets the usual permissions of a new file (``0o666`` less the umask), not the temporary file's 0600.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
