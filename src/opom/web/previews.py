"""Pictures for the page: a photo (or a video's first frame) before and after, and a zoom on the protected face.

Photos are read upright in sRGB by the project's reader (:func:`opom.data.photos.read_photo`), the same view the
cloak finds faces on, so the face boxes of a protect report fall where they should. Views are JPEGs no larger
than ``VIEW_SIDE``; zooms are PNGs (lossless, upscaled with nearest-neighbour so the mask's pixels stay visible).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

VIEW_SIDE = 900  # longer side of the before / after views
ZOOM_SIDE = 320  # side of the face zooms
ZOOM_MARGIN = 0.15  # context around the face box, as a fraction of its longer side on each side
AMPLIFY = 10  # the change picture: mid-grey + 10x the difference, so that a mask of a few grey levels shows


def read_view(path: str | Path, kind: str = "photo") -> np.ndarray | None:
    """The upright RGB uint8 pixels of a photo, or of a video's first frame; None if they cannot be read."""
    try:
        if kind == "video":
            import av

            with av.open(str(path)) as container:
                for frame in container.decode(video=0):
                    return frame.to_ndarray(format="rgb24")
            return None
        from opom.data.photos import read_photo

        return read_photo(path)[0]
    except Exception:  # noqa: BLE001 - a preview is optional; the report says what is wrong with the file
        return None


def save_view(rgb: np.ndarray, path: Path, side: int = VIEW_SIDE) -> Path:
    img = Image.fromarray(rgb)
    img.thumbnail((side, side), Image.LANCZOS)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, "JPEG", quality=90)
    return path


def zoom_box(box, hw: tuple[int, int], margin: float = ZOOM_MARGIN) -> tuple[int, int, int, int]:
    """A square (x0, y0, x1, y1) around a face box with a margin, kept inside an image of ``hw``."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    side = max(8.0, min(side, float(min(hw))))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = int(round(min(max(cx - side / 2, 0), hw[1] - side)))
    top = int(round(min(max(cy - side / 2, 0), hw[0] - side)))
    return left, top, left + int(side), top + int(side)


def save_zoom(rgb: np.ndarray, box: tuple[int, int, int, int], path: Path, side: int = ZOOM_SIDE) -> Path:
    x0, y0, x1, y1 = box
    crop = Image.fromarray(rgb[y0:y1, x0:x1])
    resample = Image.NEAREST if crop.width < side else Image.LANCZOS
    path.parent.mkdir(parents=True, exist_ok=True)
    crop.resize((side, side), resample).save(path, "PNG")
    return path


def save_change(before: np.ndarray, after: np.ndarray, box: tuple[int, int, int, int], path: Path,
                side: int = ZOOM_SIDE, amplify: float = AMPLIFY) -> Path:
    """What the mask changed in the zoom square: mid-grey where nothing changed, the difference amplified."""
    x0, y0, x1, y1 = box
    diff = after[y0:y1, x0:x1].astype(np.float32) - before[y0:y1, x0:x1].astype(np.float32)
    change = np.clip(128 + amplify * diff, 0, 255).astype(np.uint8)
    return save_zoom(change, (0, 0, x1 - x0, y1 - y0), path, side)


def before_after(source: Path, output: Path | None, entry: dict, folder: Path) -> dict[str, Path]:
    """Views of ``source`` and its protected ``output``, and zooms on the first protected face (photos).

    Returns the pictures written (keys ``before``, ``after``, ``zoom_before``, ``zoom_after``, ``change``), as far
    as the files can be read.
    """
    kind = entry.get("kind", "photo")
    stem = folder / source.name
    made: dict[str, Path] = {}
    before = read_view(source, kind)
    if before is not None:
        made["before"] = save_view(before, stem.with_name(stem.name + ".before.jpg"))
    after = read_view(output, kind) if output is not None and output.is_file() else None
    if after is not None:
        made["after"] = save_view(after, stem.with_name(stem.name + ".after.jpg"))
    faces, chosen = entry.get("faces") or [], entry.get("chosen") or []
    if before is None or after is None or before.shape != after.shape or not chosen or chosen[0] >= len(faces):
        return made
    box = faces[chosen[0]].get("box")
    if box is None:
        return made
    square = zoom_box(box, before.shape[:2])
    made["zoom_before"] = save_zoom(before, square, stem.with_name(stem.name + ".zoom_before.png"))
    made["zoom_after"] = save_zoom(after, square, stem.with_name(stem.name + ".zoom_after.png"))
    made["change"] = save_change(before, after, square, stem.with_name(stem.name + ".change.png"))
    return made
