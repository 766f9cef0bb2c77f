"""``opom web``: a local web page over the cloak tool, for people who do not use a terminal.

One page on http://127.0.0.1 (a free port; nothing listens on other interfaces): drop photos of yourself to make
your mask (``opom enroll``), drop photos or videos to get protected copies (``opom protect``), and ask the local
face-recognition models whether they still recognise you (``opom check``). Uploads live in a temporary folder that
is removed when the server stops; nothing leaves the machine. See :mod:`opom.web.server`.
"""

from __future__ import annotations

import argparse

DEFAULT_MAX_UPLOAD_MB = 2048


def add_parser(sub) -> argparse.ArgumentParser:
    """The ``web`` subcommand of ``opom``."""
    w = sub.add_parser("web", help="a local web page for enroll, protect and check (no terminal needed)",
                       description="Start the opom page on this computer (http://127.0.0.1, a free port) and open "
                                   "it in the browser. Uploads stay in a temporary folder, removed when it stops "
                                   "(Ctrl-C). Nothing leaves this machine.")
    w.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    w.add_argument("--no-browser", action="store_true", help="print the address instead of opening the browser")
    w.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                   help=f"largest upload, in MB ({DEFAULT_MAX_UPLOAD_MB})")
    return w


def run(args) -> int:
    from opom.web.server import serve

    return serve(port=args.port, open_browser=not args.no_browser, max_upload_mb=args.max_upload_mb)
