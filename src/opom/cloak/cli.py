"""The ``opom`` command: ``enroll``, ``protect`` and ``check`` (see ``opom <command> --help``).

Exit status: 0 when everything asked for succeeded (``protect``: every file protected; ``check``: every protected
photo protected against every panel model), 1 when some did not (the report says which), 2 on bad input (one
``error:`` line naming the fix), 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys

from opom import web
from opom.cli_errors import friendly_errors


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, status 2
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _pairs(items: list[str] | None, what: str, cast=str) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"error: {what} must look like NAME=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k] = cast(v)
        except ValueError:
            raise SystemExit(f"error: {what} {item!r}: {v!r} is not a number") from None
    return out


def _detect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-score", type=float, default=0.9, help="smallest MTCNN face probability (0.9)")
    p.add_argument("--min-face-size", type=int, default=24, help="smallest face (shorter box side, pixels; 24)")
    p.add_argument("--max-side", type=int, default=1024, help="longer side of the copy the detector sees (1024)")


def _detect(args):
    from opom.cloak.faces import DetectSettings

    return DetectSettings(min_score=args.min_score, min_face_size=args.min_face_size, max_side=args.max_side)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="opom", description="One Person, One Mask: make your mask from a few photos of yourself "
                     "(enroll), add it to every photo and video of you before it goes online (protect), and see "
                     "whether local face-recognition models still recognise you (check). Nothing leaves this "
                     "machine.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    e = sub.add_parser("enroll", help="photos of one person -> that person's mask file",
                       description="Craft a person's mask from photos of them (3-10 varied photos work best). The "
                                   "mask file also stores the person's mean face embedding (for protect --choose "
                                   "match): keep it as private as the photos.")
    e.add_argument("photos", nargs="+", help="photos or folders of photos of ONE person")
    e.add_argument("--out", "-o", required=True, help="mask file to write (.safetensors)")
    e.add_argument("--name", help="the person's name in the mask file (default: the folder or file name)")
    e.add_argument("--surrogate", default="sface", help="face model the mask is crafted on (zoo arch; sface)")
    e.add_argument("--weights", help="weights file of the surrogate, if its arch needs one")
    e.add_argument("--method", default="convex_hull", help="subspace method (convex_hull, affine_hull, "
                                                            "class_center, fi_uap, fi_uap_plus; convex_hull)")
    e.add_argument("--attack", default="fim", help="optimiser: fim (16 iterations) or dfanet_mi (100); fim")
    e.add_argument("--eps", type=float, default=8.0, help="largest pixel change in grey levels (8, as the paper)")
    e.add_argument("--iterations", type=int, help="attack iterations (default: the attack's own)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing mask file")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    _detect_args(e)

    p = sub.add_parser("protect", help="photos, folders or videos -> protected copies",
                       description="Add a person's mask to the faces in photos and videos. Copies keep format, size, "
                                   "orientation, colour profile and EXIF; originals are never modified. Each run "
                                   "appends one line per file to a JSON-lines report.")
    p.add_argument("inputs", nargs="+", help="photos, videos (.mp4 .mov .m4v .mkv) or folders")
    p.add_argument("--mask", "-m", required=True, help="mask file from `opom enroll`")
    p.add_argument("--out", "-o", help="output folder (default: next to each input as <name>_protected.<ext>)")
    p.add_argument("--identity", help="the person, when the mask file holds several")
    p.add_argument("--choose", choices=("match", "largest", "all"), default="match",
                   help="faces to protect: those matching the enrolled person (default), the largest, or all")
    p.add_argument("--template", default="arcface_112", help="alignment template; must be the mask's (arcface_112)")
    p.add_argument("--feather", type=float, default=6.0, help="soft edge of the face region, crop pixels (6)")
    p.add_argument("--jpeg-quality", type=int, action="append",
                   help="JPEG/WebP quality to use (repeat to try several in order); default 95, 97, 99, 100: the "
                        "first at which the mask survives")
    p.add_argument("--min-survival", type=float, default=0.98,
                   help="how much of the mask must survive lossy encoding (cosine, 0..1; 0.98)")
    p.add_argument("--strip-location", action="store_true", help="remove GPS EXIF and XMP from the copies")
    p.add_argument("--overwrite", action="store_true", help="replace earlier outputs (never an input)")
    p.add_argument("--suffix", default="_protected", help="name suffix of copies written next to the inputs")
    p.add_argument("--report", help="report file (default: opom_protect_report.jsonl in the output folder)")
    p.add_argument("--detect-every", type=int, default=1, help="video: detect faces every k-th frame (1)")
    p.add_argument("--smooth", type=float, default=1.5, help="video: landmark smoothing over time, frames (1.5)")
    p.add_argument("--crf", type=int, default=12, help="video: x264 quality, lower is better (12)")
    p.add_argument("--preset", default="medium", help="video: x264 speed preset (medium)")
    p.add_argument("--pix-fmt", choices=("yuv444p", "yuv420p"), default="yuv444p",
                   help="video: yuv444p keeps the mask's colour detail; yuv420p plays everywhere")
    p.add_argument("--device", default="cpu", help="device for face detection and matching (cpu, cuda)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _detect_args(p)

    c = sub.add_parser("check", help="am I protected? clean vs protected photos against local FR models",
                       description="Compare protected photos with clean photos of the person using a local panel "
                                   "of face-recognition models; print each model's score, its threshold and a "
                                   "verdict per photo, and the protection rate.")
    c.add_argument("clean", nargs="*", help="clean photos (or folders) of the person, e.g. the enrolment photos "
                                            "(default with --report: the originals in the report)")
    c.add_argument("--protected", nargs="+", help="protected photos to check")
    c.add_argument("--report", help="a protect report: check every photo it protected, against its original")
    c.add_argument("--panel", default="sface,dlib", help="comma-separated zoo models (sface,dlib; dlib is skipped "
                                                         "when not installed)")
    c.add_argument("--weights", action="append", metavar="NAME=PATH", help="weights of a panel model")
    c.add_argument("--threshold", action="append", metavar="NAME=VALUE",
                   help="verification threshold of a panel model (cosine; dlib: L2 distance)")
    c.add_argument("--json", help="also write the numbers to this JSON file")
    _detect_args(c)
    web.add_parser(sub)
    return parser


def _enroll(args) -> int:
    from opom.cloak.enroll import EnrollSettings, enroll

    settings = EnrollSettings(surrogate=args.surrogate, weights=args.weights, method=args.method, attack=args.attack,
                              eps=args.eps, iterations=args.iterations, detect=_detect(args))
    enroll(args.photos, args.out, name=args.name, settings=settings, overwrite=args.overwrite,
           progress=not args.no_progress)
    return 0


def _protect(args) -> int:
    from opom.cloak.protect import ProtectSettings, protect

    qualities = tuple(args.jpeg_quality) if args.jpeg_quality else ProtectSettings.jpeg_qualities
    settings = ProtectSettings(choose=args.choose, template=args.template, feather=args.feather, detect=_detect(args),
                               jpeg_qualities=qualities, min_survival=args.min_survival,
                               strip_location=args.strip_location, overwrite=args.overwrite, suffix=args.suffix,
                               detect_every=args.detect_every, smooth_sigma=args.smooth, crf=args.crf,
                               preset=args.preset, pix_fmt=args.pix_fmt)
    entries = protect(args.inputs, args.mask, out=args.out, identity=args.identity, settings=settings,
                      report=args.report, device=args.device, progress=not args.no_progress)
    return 0 if all(e["outcome"] == "protected" for e in entries) else 1


def _check(args) -> int:
    from opom.cloak.check import build_panel, check, save_result

    notes: list[str] = []
    names = [n.strip() for n in args.panel.split(",") if n.strip()]
    panel = build_panel(names, weights=_pairs(args.weights, "--weights"),
                        thresholds=_pairs(args.threshold, "--threshold", float), notes=notes)
    result = check(args.clean, protected=args.protected, report=args.report, panel=panel, settings=_detect(args),
                   quiet=True)
    result.notes[:0] = notes
    print(result.table())
    if args.json:
        print(f"  numbers: {save_result(result, args.json)}")
    return 0 if result.rows and all(r["protected"] for r in result.rows) else 1


class _NotErrors(logging.Filter):
    """friendly_errors prints the error line itself; keep the log handler from printing it twice."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("error:")


@contextlib.contextmanager
def _console_logging():
    """While a command runs, show the package's notices (e.g. converting SFace, one time) on stderr, once."""
    log = logging.getLogger("opom")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(_NotErrors())
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run = {"enroll": _enroll, "protect": _protect, "check": _check, "web": web.run}[args.command]
    try:
        with _console_logging(), friendly_errors():
            return run(args)
    except SystemExit as exc:  # friendly_errors ends bad input with status 2
        return exc.code if isinstance(exc.code, int) else 2
    except KeyboardInterrupt:
        print("\ninterrupted; originals are untouched, finished files are in the report", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
