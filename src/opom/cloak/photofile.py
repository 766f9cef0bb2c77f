"""A photo file's stored pixels and metadata, and writing a protected copy that keeps them.

The protected copy is made from the file's STORED pixels (no colour conversion), so it keeps the original's
format, size, mode, bit depth, colour profile (the same ICC bytes are written back), EXIF (orientation included)
and other metadata (XMP, PNG text, DPI). Faces are found on the upright view (:func:`to_display`, the EXIF
orientation applied), the perturbation is computed there and mapped back with :func:`to_stored`.

Which photos are taken is the one input policy of :mod:`opom.data.inputs` (formats JPEG, PNG, WebP, TIFF, BMP;
modes RGB, RGBA, L, LA, 16-bit grey, 16-bit RGB / RGBA PNG, CMYK). 16-bit colour PNGs, which Pillow decodes at
8 bits, are decoded and encoded by OpenCV at 16 bits, and every ancillary chunk of the original (ICC profile, text,
EXIF, physical size, ...) is copied into the copy.

Lossless formats (PNG, TIFF without JPEG compression, BMP, lossless WebP) change only the pixels under protected
faces. Lossy ones (JPEG, lossy WebP) are re-encoded, which changes every pixel a little: the caller tries a list of
:class:`Encoding` in order and keeps the first at which the mask survives (see :mod:`opom.cloak.protect`); for a
JPEG the first is the original's own quantisation tables and chroma subsampling, then qualities at 4:4:4.
``--format png`` / ``jpeg`` writes another format than the original's (:func:`convert_target`).
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from opom.data.inputs import load_image, open_image, quiet_pillow
from opom.data.photos import PhotoError

FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "MPO", "BMP")
LOSSY = ("JPEG", "MPO", "WEBP")
SUFFIXES = {"PNG": ".png", "JPEG": ".jpg"}
GPS_IFD = 0x8825
ORIENTATION = 0x0112
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# zlib level of PNG copies: 3 encodes a 1 MP photo ~3x faster than Pillow's default 6, for files ~8 % larger
PNG_COMPRESS_LEVEL = 3
# PNG chunks that describe the pixels' encoding: taken from the new file; every other chunk is the original's
_PNG_PIXEL_CHUNKS = (b"IHDR", b"IDAT", b"IEND")


class UnsupportedPhoto(PhotoError):
    """A readable image that cannot be protected as asked."""


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
    mode: str  # Pillow's mode, or "RGB;16" / "RGBA;16" for 16-bit colour PNGs
    pixels: np.ndarray  # stored orientation: (H, W) or (H, W, C), uint8 or uint16
    orientation: int = 1
    lossless: bool = True
    icc_profile: bytes | None = None
    exif: bytes | None = None
    xmp: bytes | None = None
    dpi: tuple | None = None
    png_text: dict = field(default_factory=dict)
    tiff_compression: str | None = None
    jpeg_qtables: list | None = None  # the original JPEG's quantisation tables
    jpeg_subsampling: int | None = None  # 0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0
    png_chunks: list = field(default_factory=list)  # (type, data) of every chunk of a 16-bit colour PNG
    sha256: str = ""
    size_bytes: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def levels(self) -> float:
        return 65535.0 if self.pixels.dtype == np.uint16 else 255.0

    @property
    def colour(self) -> str:
        """How a perturbation is added (:func:`opom.cloak.blend.add_perturbation`): rgb, grey or cmyk."""
        return "cmyk" if self.mode == "CMYK" else "grey" if self.pixels.ndim == 2 or self.pixels.shape[2] <= 2 \
            else "rgb"

    @property
    def has_alpha(self) -> bool:
        return self.mode in ("RGBA", "LA", "RGBA;16")

    def display(self) -> np.ndarray:
        return to_display(self.pixels, self.orientation)

    def display_rgb8(self) -> np.ndarray:
        """The upright view as RGB uint8 (grey repeated, alpha dropped, 16 bits rounded to 8, CMYK converted as
        Pillow does without a profile): what is detected and aligned."""
        return as_rgb8(self.display(), self.mode)


def as_rgb8(pixels: np.ndarray, mode: str = "RGB") -> np.ndarray:
    a = pixels
    if mode == "CMYK":
        return np.ascontiguousarray(np.asarray(Image.fromarray(np.ascontiguousarray(a), "CMYK").convert("RGB")))
    if a.dtype == np.uint16:
        a = np.clip(np.rint(a.astype(np.float32) / 257.0), 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[2] in (1, 2):
        a = np.repeat(a[..., :1], 3, axis=2)
    return np.ascontiguousarray(a[..., :3])


def looks_grey(rgb8: np.ndarray, tolerance: int = 3, fraction: float = 0.999) -> bool:
    """True when (almost) every pixel of an RGB uint8 array has equal channels: a black-and-white photo in RGB."""
    step = max(1, int(np.sqrt(rgb8.shape[0] * rgb8.shape[1] / 250_000)))  # ~250k pixels are enough
    a = rgb8[::step, ::step].astype(np.int16)
    spread = np.maximum(np.abs(a[..., 0] - a[..., 1]), np.abs(a[..., 1] - a[..., 2]))
    return bool((spread <= tolerance).mean() >= fraction)


def _webp_lossless(data: bytes) -> bool:
    """True for a lossless (VP8L) WebP: the first image chunk is VP8L (a simple or an extended file)."""
    pos = 12
    while pos + 8 <= len(data):
        tag, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        if tag in (b"VP8 ", b"VP8L"):
            return tag == b"VP8L"
        pos += 8 + size + (size & 1)
    return False


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """The ``(type, data)`` chunks of a PNG file, in order (stops at IEND or a chunk cut short)."""
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG file")
    chunks, pos = [], len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if len(body) < length:
            break
        chunks.append((kind, body))
        pos += 12 + length
        if kind == b"IEND":
            break
    return chunks


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def splice_png(original: list[tuple[bytes, bytes]], encoded: bytes) -> bytes:
    """``encoded`` (a PNG) with every chunk of ``original`` that does not encode pixels (colour profile, text, EXIF,
    physical size, gamma, ...) put back in its original place around the new IHDR / IDAT."""
    new = png_chunks(encoded)
    out = [PNG_SIGNATURE]
    idat_done = False
    for kind, body in original:
        if kind == b"IHDR":
            out.append(_png_chunk(kind, new[0][1]))
        elif kind == b"IDAT":
            if not idat_done:
                out += [_png_chunk(k, b) for k, b in new if k == b"IDAT"]
                idat_done = True
        elif kind == b"IEND":
            break
        else:
            out.append(_png_chunk(kind, body))
    out.append(_png_chunk(b"IEND", b""))
    return b"".join(out)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except IsADirectoryError as err:
        raise PhotoError(path, "not_an_image", "is a folder, not an image file") from err
    except OSError as err:
        raise PhotoError(path, "unreadable", f"cannot read the file ({err.strerror or err})") from err


def _decode_16bit_png(data: bytes, name: str) -> np.ndarray:
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype != np.uint16 or arr.ndim != 3:
        raise PhotoError(name, "unreadable", "a 16-bit colour PNG that cannot be decoded at 16 bits; it is "
                                             "probably corrupt: re-export it")
    code = cv2.COLOR_BGRA2RGBA if arr.shape[2] == 4 else cv2.COLOR_BGR2RGB
    return np.ascontiguousarray(cv2.cvtColor(arr, code))


def load_stored(path: str | Path) -> StoredPhoto:
    """Read a photo's stored pixels and metadata (read-only). Raises :class:`PhotoError` for unusable files."""
    with quiet_pillow():
        return _load_stored(Path(path))


def _load_stored(path: Path) -> StoredPhoto:
    from opom.data.inputs import sixteen_bit_colour

    data = _read_bytes(path)
    img = open_image(data, str(path))  # the input policy: refuses what cannot be written back faithfully
    sixteen = sixteen_bit_colour(img)  # from the tile list, which decoding clears
    try:
        load_image(img, str(path))
    except Exception as err:  # noqa: BLE001 - decoders raise anything on corrupt data
        raise PhotoError(path, "unreadable", f"cannot be decoded ({type(err).__name__}: {err}); it is probably "
                                             "truncated or corrupt: re-export or re-download it") from err
    fmt = img.format or ""
    notes: list[str] = []
    if fmt == "MPO":
        notes.append("MPO (multi-picture JPEG): only the first picture is kept, written as a JPEG")
    mode, chunks = img.mode, []
    if sixteen:  # Pillow has 8 bits of it only
        pixels = _decode_16bit_png(data, str(path))
        mode = "RGBA;16" if pixels.shape[2] == 4 else "RGB;16"
        chunks = png_chunks(data)
    else:
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
    qtables = subsampling = None
    if fmt in ("JPEG", "MPO"):
        from PIL import JpegImagePlugin

        qtables = [list(t) for _, t in sorted(getattr(img, "quantization", {}).items())] or None
        subsampling = JpegImagePlugin.get_sampling(img)
        subsampling = subsampling if subsampling in (0, 1, 2) else None
    text = {k: v for k, v in getattr(img, "text", {}).items() if isinstance(v, str)} if fmt == "PNG" else {}
    xmp = img.info.get("xmp")
    return StoredPhoto(path=str(path), format="JPEG" if fmt == "MPO" else fmt, mode=mode, pixels=pixels,
                       orientation=orientation, lossless=lossless, icc_profile=img.info.get("icc_profile"),
                       exif=img.info.get("exif"), xmp=xmp if isinstance(xmp, bytes) else None,
                       dpi=img.info.get("dpi"), png_text=text, tiff_compression=compression, jpeg_qtables=qtables,
                       jpeg_subsampling=subsampling, png_chunks=chunks, sha256=hashlib.sha256(data).hexdigest(),
                       size_bytes=len(data), notes=notes)


def convert_target(photo: StoredPhoto, target: str) -> StoredPhoto:
    """``photo`` to be written as ``target`` (``same``, ``png`` or ``jpeg``), or :class:`UnsupportedPhoto` when the
    target cannot hold its mode (JPEG: no alpha, no 16 bits; PNG: no CMYK). The pixels are not converted."""
    target = target.upper()
    if target in ("SAME", photo.format) or (target == "JPEG" and photo.format == "MPO"):
        return photo
    if target == "PNG":
        if photo.mode == "CMYK":
            raise UnsupportedPhoto(photo.path, "unsupported", "a CMYK photo cannot be written as PNG: use --format "
                                                              "same (CMYK JPEG/TIFF) or convert it to RGB first")
        return StoredPhoto(**{**photo.__dict__, "format": "PNG", "lossless": True, "tiff_compression": None,
                              "png_chunks": photo.png_chunks if photo.format == "PNG" else [], "png_text": {},
                              "jpeg_qtables": None, "jpeg_subsampling": None, "notes": list(photo.notes)})
    if target == "JPEG":
        if photo.has_alpha:
            raise UnsupportedPhoto(photo.path, "unsupported", "JPEG has no transparency: this photo has an alpha "
                                                              "channel; use --format png or same")
        if photo.pixels.dtype == np.uint16:
            raise UnsupportedPhoto(photo.path, "unsupported", "JPEG has 8 bits per channel: this photo has 16; use "
                                                              "--format png or same")
        return StoredPhoto(**{**photo.__dict__, "format": "JPEG", "lossless": False, "tiff_compression": None,
                              "png_chunks": [], "png_text": {}, "jpeg_qtables": None, "jpeg_subsampling": None,
                              "notes": list(photo.notes)})
    raise ValueError(f"unknown output format {target!r}")


@dataclass(frozen=True)
class Encoding:
    """How a lossy file is encoded: its own JPEG tables and subsampling (``keep``), or a quality at 4:4:4."""

    quality: int | None = None  # None: the original's quantisation tables and subsampling
    label: str = ""

    def describe(self) -> str:
        return self.label or (f"q{self.quality}" if self.quality is not None else "original tables")


_REFERENCE_TABLES: dict[int, list] = {}


def jpeg_tables(quality: int) -> list[list[int]]:
    """The quantisation tables (luminance, chrominance) that libjpeg uses at ``quality``."""
    if quality not in _REFERENCE_TABLES:
        buf = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buf, "JPEG", quality=quality)
        _REFERENCE_TABLES[quality] = [list(t) for _, t in sorted(Image.open(buf).quantization.items())]
    return _REFERENCE_TABLES[quality]


def keeps_fine_detail(photo: StoredPhoto, quality: int) -> bool:
    """Whether the original JPEG's own tables and subsampling are at least as fine as ``quality`` at 4:4:4: then
    the mask has a chance to survive them (a 4:2:0 or coarser original loses its colour detail for sure)."""
    if not photo.jpeg_qtables or photo.jpeg_subsampling != 0:
        return False
    reference = jpeg_tables(quality)
    return len(photo.jpeg_qtables) >= 2 and all(
        len(t) == len(r) and all(a <= b for a, b in zip(t, r, strict=True))
        for t, r in zip(photo.jpeg_qtables[:2], reference[:2], strict=False))


def encodings(photo: StoredPhoto, qualities: tuple[int, ...], keep_original: bool = True) -> list[Encoding]:
    """The encodings to try for a lossy photo, in order: the original's own JPEG tables and subsampling first (when
    they are at least as fine as the first quality at 4:4:4), then ``qualities`` at 4:4:4."""
    first = [Encoding(None, "original tables")] if keep_original and qualities and keeps_fine_detail(
        photo, int(qualities[0])) else []
    return first + [Encoding(int(q)) for q in qualities]


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


def encode(photo: StoredPhoto, pixels: np.ndarray, quality: int | Encoding | None = None,
           strip_location: bool = False) -> bytes:
    """The encoded file for ``pixels`` (stored orientation) with ``photo``'s format and metadata.

    ``quality`` (an int or an :class:`Encoding`) is used by lossy formats: JPEG with the original's tables and
    subsampling, or at a quality with 4:4:4 chroma; lossy WebP at a quality. ``strip_location`` drops EXIF GPS and
    XMP (XMP often repeats the location).
    """
    enc = quality if isinstance(quality, Encoding) else Encoding(int(quality or 95))
    exif = exif_without_location(photo.exif) if strip_location else photo.exif
    xmp = None if strip_location else photo.xmp
    fmt = photo.format
    if photo.mode in ("RGB;16", "RGBA;16"):
        return _encode_16bit_png(photo, pixels, exif, strip_location)
    if pixels.dtype == np.uint16:
        img = Image.fromarray(pixels.astype(np.uint16))  # mode I;16
    else:
        mode = photo.mode if photo.mode in ("RGB", "RGBA", "L", "LA", "CMYK") else None
        img = Image.frombytes(mode, pixels.shape[1::-1], np.ascontiguousarray(pixels).tobytes()) if mode == "CMYK" \
            else Image.fromarray(np.ascontiguousarray(pixels), mode=mode)
    kw: dict = {}
    if photo.icc_profile:
        kw["icc_profile"] = photo.icc_profile
    if exif:
        kw["exif"] = exif
    if photo.dpi and fmt in ("JPEG", "PNG", "TIFF"):
        kw["dpi"] = tuple(float(d) for d in photo.dpi)
    if fmt == "JPEG":
        if enc.quality is None and photo.jpeg_qtables:
            kw.update(qtables=photo.jpeg_qtables, optimize=True,
                      subsampling=photo.jpeg_subsampling if photo.jpeg_subsampling is not None else 0)
        else:
            kw.update(quality=int(enc.quality or 95), subsampling=0, optimize=True)
        if xmp:
            kw["xmp"] = xmp
    elif fmt == "WEBP":
        if photo.lossless:
            kw.update(lossless=True, exact=True)
        else:
            kw.update(quality=int(enc.quality or 95), method=4)
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
        kw["compress_level"] = PNG_COMPRESS_LEVEL
    elif fmt == "TIFF":
        if photo.tiff_compression and photo.tiff_compression != "raw":
            kw["compression"] = photo.tiff_compression
    elif fmt == "BMP":
        kw = {}
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _encode_16bit_png(photo: StoredPhoto, pixels: np.ndarray, exif: bytes | None, strip_location: bool) -> bytes:
    """A 16-bit colour PNG by OpenCV, with the original's other chunks (``strip_location``: no eXIf GPS, no XMP)."""
    import cv2

    code = cv2.COLOR_RGBA2BGRA if pixels.shape[2] == 4 else cv2.COLOR_RGB2BGR
    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(pixels), code))
    if not ok:
        raise RuntimeError("OpenCV could not encode the 16-bit PNG")
    chunks = list(photo.png_chunks) or [(b"IHDR", b""), (b"IDAT", b""), (b"IEND", b"")]
    if strip_location:
        kept = []
        for kind, body in chunks:
            if kind == b"eXIf":
                body = (exif or b"").removeprefix(b"Exif\x00\x00")
                if not body:
                    continue
            if kind == b"iTXt" and body.startswith(b"XML:com.adobe.xmp\x00"):
                continue
            kept.append((kind, body))
        chunks = kept
    return splice_png(chunks, buf.tobytes())


def decode_pixels(data: bytes, mode: str | None = None) -> np.ndarray:
    """The stored pixels of an encoded file (as :func:`load_stored` reads them; ``mode`` the photo's mode)."""
    if mode in ("RGB;16", "RGBA;16"):
        return _decode_16bit_png(data, "<encoded>")
    from opom.data.inputs import _pillow_size_check_off

    with _pillow_size_check_off():  # our own output: its size was checked when the original was opened
        img = Image.open(io.BytesIO(data))
        img.load()
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
