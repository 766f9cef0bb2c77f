"""Per-file reports of ``protect``: one JSON line per input path and run, appended and flushed as files finish.

Each entry has ``source``, ``output`` (None when nothing was written), ``kind`` (photo / video / skipped),
``outcome`` (see :data:`OUTCOMES`), ``reason``, the faces found and chosen, and per protected face (see
:data:`FIELDS`) its 2x3 source -> crop ``transform``, ``aligned_max_change`` and ``retention``, plus format details
(JPEG ``encoding``, ``survival``), the mask used, the settings and the time taken. The file is created when the
first entry is written: a run interrupted before any file finished leaves no report.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

from opom import __version__

REPORT_NAME = "opom_protect_report.jsonl"
OUTCOMES = {
    "protected": "faces protected, the copy written",
    "done": "the copy from an earlier run (same source, mask and settings) is there and unchanged; kept",
    "no_face": "no face found (nothing written)",
    "no_match": "faces found, none matches the enrolled person (nothing written; try --choose largest or all)",
    "exists": "another file has the output's name (nothing written; --overwrite replaces it)",
    "not_an_image": "not an image or video file",
    "unreadable": "a recognised file that cannot be decoded (truncated, corrupt, no permission)",
    "too_large": "over the pixel limit (--max-pixels), checked before decoding",
    "unsupported": "a file of a format or mode that cannot keep a mask (the reason names the fix)",
    "ignored": "not taken: hidden, a link leading outside the folder, an earlier output, an empty folder",
    "unwritable": "the copy could not be written (permissions, disk full); the original is untouched",
    "error": "unexpected failure (a bug); the original is untouched",
}
OK_OUTCOMES = ("protected", "done")
FIELDS = {
    "aligned_max_change": "the largest change, in grey levels, inside the face's aligned 112x112 crop of the written "
                          "file (what a face-recognition model sees): eps plus rounding, plus re-encoding noise for "
                          "JPEG and video",
    "retention": "cosine similarity (0..1) between that change and the intended mask: how much of the mask's "
                 "pattern arrived in the written file (1 = all of it; resampling onto the photo and back costs a "
                 "little, lossy encoding more)",
    "survival": "lossy formats: retention after encoding relative to before encoding; the first encoding with "
                "survival >= --min-survival is kept",
    "grey / mask_kind": "grey photos get the mask's luminance version (mask_kind luminance) so they stay grey",
}


class ReportWriter:
    """Appends one flushed JSON line per entry to ``path`` (created with its folder)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.file = None
        self.entries: list[dict] = []

    @property
    def opened(self) -> bool:
        return self.file is not None

    def write(self, entry: dict) -> dict:
        if self.file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.path, "a", encoding="utf-8")
        entry = {**entry, "opom_version": __version__, "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self.file.write(json.dumps(entry, ensure_ascii=False, default=_plain) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())
        self.entries.append(entry)
        return entry

    def close(self) -> None:
        if self.file is not None:
            self.file.close()

    def __enter__(self) -> ReportWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _plain(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_report(path: str | Path) -> list[dict]:
    """All entries of a report (lines cut short by an interruption are skipped)."""
    entries = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict) and "source" in entry:
                entries.append(entry)
    return entries


def summary(entries: list[dict], report_path: str | Path | None = None, elapsed_s: float | None = None) -> str:
    counts = Counter(e["outcome"] for e in entries)
    parts = ", ".join(f"{k} {v}" for k, v in counts.most_common())
    faces = sum(len(e.get("protected_faces") or e.get("chosen_tracks") or []) for e in entries
                if e["outcome"] == "protected")
    lines = [f"protect: {len(entries)} path(s): {parts or 'none'}; {faces} face(s) protected"
             + (f" in {elapsed_s:.1f} s" if elapsed_s is not None else "")]
    for e in entries:
        if e["outcome"] == "protected" and e.get("kind") == "video":
            lines.append(f"  ok   {e['source']} -> {e['output']} ({e['frames']} frames, {len(e['chosen_tracks'])} "
                         f"face track(s), max change {e['aligned_max_change']} grey levels in the aligned face)")
        elif e["outcome"] == "protected":
            worst = max((f.get("aligned_max_change", 0) for f in e.get("protected_faces", [])), default=0)
            kept = min((f.get("retention", 0) for f in e.get("protected_faces", [])), default=0)
            lines.append(f"  ok   {e['source']} -> {e['output']} ({len(e['protected_faces'])} face(s), max change "
                         f"{worst} grey levels, retention {kept:.2f} in the aligned face"
                         + (", grey: luminance mask" if e.get("mask_kind") == "luminance" else "") + ")")
        elif e["outcome"] == "done":
            lines.append(f"  done {e['source']} -> {e['output']} (from an earlier run; kept)")
        else:
            lines.append(f"  {e['outcome']}: {e['source']}: {e.get('reason') or OUTCOMES.get(e['outcome'], '')}")
        if e.get("warning"):
            lines.append(f"       warning: {e['warning']}")
    if report_path is not None:
        lines.append(f"  report: {report_path} (fields: `opom protect --help`)")
    return "\n".join(lines)
