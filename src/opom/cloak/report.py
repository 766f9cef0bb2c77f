"""Per-file reports of ``protect``: one JSON line per input file and run, appended and flushed as files finish.

Each entry has ``source``, ``output`` (None when nothing was written), ``kind`` (photo / video), ``outcome``
(see :data:`OUTCOMES`), ``reason``, the faces found and chosen, per protected face its 2x3 source -> crop
``transform``, ``aligned_max_change`` (grey levels, in the aligned crop of the written file) and ``retention``
(cosine of that change with the intended mask), plus format details (JPEG quality, mask ``survival`` after
encoding), the mask used and the time taken.
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
    "no_face": "no face found (nothing written)",
    "no_match": "faces found, none matches the enrolled person (nothing written; try --choose largest or all)",
    "exists": "the output file exists already (nothing written; --overwrite replaces earlier outputs)",
    "not_an_image": "not an image or video file",
    "unreadable": "a recognised file that cannot be decoded (truncated, corrupt, no permission)",
    "unsupported": "a readable file whose format or mode cannot keep a mask (the reason names the fix)",
    "error": "unexpected failure (a bug); the original is untouched",
}
OK_OUTCOMES = ("protected",)


class ReportWriter:
    """Appends one flushed JSON line per entry to ``path`` (created with its folder)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a", encoding="utf-8")
        self.entries: list[dict] = []

    def write(self, entry: dict) -> dict:
        entry = {**entry, "opom_version": __version__, "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self.file.write(json.dumps(entry, ensure_ascii=False, default=_plain) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())
        self.entries.append(entry)
        return entry

    def close(self) -> None:
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
    lines = [f"protect: {len(entries)} file(s): {parts or 'none'}; {faces} face(s) protected"
             + (f" in {elapsed_s:.1f} s" if elapsed_s is not None else "")]
    for e in entries:
        if e["outcome"] == "protected" and e.get("kind") == "video":
            lines.append(f"  ok   {e['source']} -> {e['output']} ({e['frames']} frames, {len(e['chosen_tracks'])} "
                         f"face track(s), max change {e['aligned_max_change']} grey levels in the aligned face)")
        elif e["outcome"] == "protected":
            worst = max((f.get("aligned_max_change", 0) for f in e.get("protected_faces", [])), default=0)
            lines.append(f"  ok   {e['source']} -> {e['output']} ({len(e['protected_faces'])} face(s), "
                         f"max change {worst} grey levels in the aligned face)")
        else:
            lines.append(f"  {e['outcome']}: {e['source']}: {e.get('reason') or OUTCOMES.get(e['outcome'], '')}")
    if report_path is not None:
        lines.append(f"  report: {report_path}")
    return "\n".join(lines)
