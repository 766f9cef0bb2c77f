"""What the page's jobs do: the cloak's public API on a session's files, and its results in plain words.

Each task calls :func:`opom.cloak.enroll`, :func:`opom.cloak.protect` or :func:`opom.cloak.check` exactly as the
``opom`` command does (same settings types, same defaults, same messages: what they print is captured for the
page's "details"), then shapes the returned result / report entries / check rows for the page. Nothing here
decides what a face, a mask or a verdict is.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

from opom.errors import UserError
from opom.web.jobs import Job, Session, local_paths
from opom.web.previews import before_after

MODEL_NAMES = {"sface": "SFace", "dlib": "dlib"}  # how the page names panel models; others by their zoo name


def safe_name(name: str, default: str = "file") -> str:
    """A plain file name from an uploaded name (no folders, no hidden files, no odd characters)."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = re.sub(r"[^\w.\- ()]+", "_", base).strip(" .") or default
    return base[:120]


def session_url(session: Session, path: Path, download: bool = False) -> str:
    rel = Path(path).relative_to(session.folder).as_posix()
    return f"/api/s/{session.id}/files/{rel}" + ("?download=1" if download else "")


def model_name(name: str) -> str:
    return MODEL_NAMES.get(name, name)


# ------------------------------------------------------------------------------------------------ masks


def describe_mask(path: Path) -> dict:
    """What the page shows of a mask file; raises the cloak's :class:`UserError` for a file that is not one."""
    from opom.cloak.mask import load_person_mask

    person = load_person_mask(path)
    info = person.describe()
    info.pop("path", None)
    return info | {"match": person.match is not None, "file": path.name,
                   "surrogate_name": model_name(info["surrogate"])}


def use_mask(session: Session, path: Path, enrolment_photos: list[Path] | None = None) -> dict:
    """Make ``path`` the session's mask (after checking it); a loaded mask has no enrolment photos here."""
    info = describe_mask(path)
    with session.lock:
        session.mask, session.mask_info = path, info
        session.enrolment_photos = list(enrolment_photos or [])
    return info | {"download": session_url(session, path, download=True)}


# ----------------------------------------------------------------------------------------------- enroll


def enroll_task(session: Session, job: Job, photos: list[Path], name: str, eps: float | None,
                iterations: int | None, detector=None, strength: str | None = None) -> dict:
    from opom.cloak import enroll
    from opom.cloak.enroll import EnrollSettings

    chosen = {"eps": eps, "iterations": iterations, "strength": strength}
    settings = EnrollSettings(**{k: v for k, v in chosen.items() if v is not None})  # the rest: the CLI's defaults
    out = job.folder / "mask" / f"{safe_name(name, 'me')}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    job.phase, job.total = f"finding your face in {len(photos)} photo(s), then crafting your mask", 0
    result = enroll(photos, out, name=name, settings=settings, detector=detector, progress=False)
    info = use_mask(session, out, [Path(p) for p in result.used])
    wb = result.whitebox or {}
    return {"mask": info, "used": [Path(p).name for p in result.used],
            "skipped": {Path(k).name: why for k, why in result.skipped.items()},
            "preview": session_url(session, result.preview) if result.preview else None,
            "whitebox": wb,
            "plain": _enroll_words(result.masks.surrogate, wb, len(result.used), result.masks.extra.get("enroll"))}


def _enroll_words(surrogate: str, wb: dict, photos: int, enroll_info: dict | None = None) -> list[str]:
    lines = [f"Your mask is ready, made from {photos} photo(s)."]
    if photos < 3:
        lines.append("Only a few photos: 3-10 varied photos of you make a mask that works better on new photos.")
    for model, check in (wb.get("models") or {surrogate: wb}).items() if wb else ():
        thr = check.get("threshold")
        l2 = check.get("rule") == "l2"
        fooled = thr is not None and (check["protected_mean"] >= thr if l2 else check["protected_mean"] < thr)
        looks = "score" if thr is None else ("no longer look like you" if fooled else "still look like you")
        what = "distance" if l2 else "similarity"
        lines.append(f"To {model_name(model)}, a model the mask was made on, your masked photos {looks} "
                     f"({what} {check['protected_mean']:.2f} instead of {check['clean_mean']:.2f}"
                     + (f"; 'same person' {'below' if l2 else 'from'} {thr:.3f})." if thr is not None else ")."))
    if enroll_info is not None:
        from opom.cloak.enroll import expectation

        words = expectation(enroll_info)
        lines.append(words[:1].upper() + words[1:] + ".")
    return lines


# ---------------------------------------------------------------------------------------------- protect


def protect_task(session: Session, job: Job, files: list[Path], mask: Path, choose: str, strip_location: bool,
                 detector=None) -> dict:
    from opom.cloak import protect
    from opom.cloak.protect import ProtectSettings
    from opom.cloak.report import OUTCOMES, REPORT_NAME, read_report

    out = job.folder / "protected"
    report = out / REPORT_NAME
    job.phase, job.total = "protecting", len(files)
    job.progress = lambda: (len(read_report(report)) if report.is_file() else 0, len(files))
    settings = ProtectSettings(choose=choose, strip_location=strip_location)
    entries = protect(files, mask, out=out, settings=settings, report=report, detector=detector, progress=False)
    job.progress, job.done = None, len(entries)
    job.phase = "making the before / after pictures"
    cards, pairs = [], []
    for entry in entries:
        source = Path(entry["source"])
        output = Path(entry["output"]) if entry.get("output") else None
        ok = entry["outcome"] == "protected"
        pictures = before_after(source, output, entry, job.folder / "views")
        card = {"name": source.name, "kind": entry.get("kind", "photo"), "outcome": entry["outcome"], "ok": ok,
                "plain": OUTCOMES.get(entry["outcome"], entry["outcome"]),
                "reason": local_paths(entry.get("reason"), session, job), "warning": entry.get("warning"),
                "faces": len(entry.get("protected_faces") or entry.get("chosen_tracks") or []),
                "max_change": _max_change(entry),
                "pictures": {k: session_url(session, p) for k, p in pictures.items()}}
        if ok and output is not None:
            card["download"] = session_url(session, output, download=True)
            if card["kind"] == "photo":
                pairs.append((source, output, entry.get("sha256")))
        cards.append(card)
    with session.lock:
        session.protected += [(s, o) for s, o, _ in _against_enrolment(session, pairs)]
    protected = sum(c["ok"] for c in cards)
    return {"files": cards, "protected": protected, "total": len(cards),
            "zip": f"/api/s/{session.id}/jobs/{job.id}/zip" if protected else None}


def _max_change(entry: dict) -> int | None:
    if entry.get("kind") == "video":
        return entry.get("aligned_max_change")
    return max((f.get("aligned_max_change", 0) for f in entry.get("protected_faces") or []), default=None)


def _against_enrolment(session: Session, pairs: list[tuple[Path, Path, str | None]]
                       ) -> list[tuple[Path, Path, str | None]]:
    """Pairs whose original is byte-for-byte an enrolment photo point at that photo instead of the upload.

    ``check`` leaves a protected photo's own original out of the references; the page uploads the photo twice
    (to enroll, then to protect), so the original is named as the enrolment copy the references hold.
    """
    import hashlib

    digests = {}
    for ref in session.enrolment_photos:
        try:
            digests[hashlib.sha256(ref.read_bytes()).hexdigest()] = ref
        except OSError:
            continue
    return [(digests.get(sha, source), output, sha) for source, output, sha in pairs]


def zip_outputs(job: Job) -> Path:
    """The protected copies of a protect job in one zip file (stored: photos and videos are compressed already)."""
    folder = job.folder / "protected"
    files = [e for e in (job.result or {}).get("files", []) if e.get("ok")]
    path = job.folder / "opom_protected.zip"
    if not path.exists():
        tmp = path.with_suffix(".zip.tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
            for card in files:
                zf.write(folder / card["name"], arcname=card["name"])
        tmp.replace(path)
    return path


# ------------------------------------------------------------------------------------------------ check


def check_task(session: Session, job: Job, detector=None) -> dict:
    from opom.cloak import check

    with session.lock:
        pairs, references = list(session.protected), list(session.enrolment_photos)
    if not pairs:
        raise UserError("nothing to check yet: protect some photos of you first (step 2)")
    job.phase = (f"asking the local face-recognition models about {len(pairs)} protected photo(s)"
                 + (f" and {len(references)} clean photo(s) of you" if references else ""))
    result = check(references, protected=[p for _, p in pairs], originals=[o for o, _ in pairs], detector=detector)
    rows = []
    for r in result.rows:
        rate = result.rates.get(r["model"], {})
        rows.append({"model": model_name(r["model"]), "photo": Path(r["photo"]).name, "protected": r["protected"],
                     "verdict": r["verdict"], "score": r["protected_score"], "clean_score": r.get("clean_score"),
                     "rule": r["rule"], "plain": _verdict_words(r, rate)})
    models = [{"model": model_name(name), "protected": rate["protected"], "total": rate["total"],
               "plain": f"{model_name(name)}: {rate['protected']} of {rate['total']} protected photo(s) no longer "
                        "recognised as you"
                        + (f" (it recognised {rate['clean_recognised']} of {rate['clean_total']} unprotected "
                           "originals)" if rate.get("clean_total") else "")}
              for name, rate in result.rates.items()]
    everything = bool(result.rows) and all(r["protected"] for r in result.rows)
    headline = ("None of the models recognises you in your protected photos." if everything else
                "Some models still recognise you in some protected photos (marked below). A stronger mask "
                "(a higher strength in step 1, more visible) may help; check again after.")
    return {"rows": rows, "models": models, "all_protected": everything, "headline": headline,
            "references": len(result.references),
            "notes": [local_paths(n, session, job) for n in result.notes]}


def _verdict_words(row: dict, rate: dict) -> str:
    name, photo = model_name(row["model"]), Path(row["photo"]).name
    said = (f"{name} no longer recognises you in {photo}" if row["protected"] else
            f"{name} still recognises you in {photo}")
    threshold = rate.get("threshold")
    if threshold is None or row.get("protected_score") is None:
        return said + "."
    if rate.get("metric") == "l2":
        how = f"distance {row['protected_score']:.3f}; it says 'same person' below {threshold:.3f}"
    else:
        how = f"similarity {row['protected_score']:.3f}; it says 'same person' from {threshold:.3f}"
    clean = row.get("clean_score")
    return f"{said} ({how}" + (f"; the unprotected photo scored {clean:.3f})." if clean is not None else ").")
