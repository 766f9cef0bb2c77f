"""The ``opom web`` server: one local page over the cloak tool (aiohttp, 127.0.0.1 only).

HTTP API (all JSON unless a file; ``{sid}`` is the tab's session, created by the page on load):

- ``POST /api/session`` -> ``{"session", "max_upload_mb"}``; ``POST /api/s/{sid}/close`` ends it (files removed);
- ``POST /api/s/{sid}/enroll`` (multipart: ``files``, ``name``, ``strength``, ``eps``, ``iterations``) -> ``{"job"}``;
- ``POST /api/s/{sid}/protect`` (multipart: ``files``, ``choose``, ``strip_location``) -> ``{"job"}``;
- ``POST /api/s/{sid}/check`` -> ``{"job"}``; ``GET /api/s/{sid}/jobs/{job}`` -> the job's state and result;
- ``POST /api/s/{sid}/mask`` (multipart: ``file``) loads a mask file; ``GET /api/s/{sid}/mask`` saves it;
- ``GET /api/s/{sid}/files/{path}`` a file of the session (``?download=1``: as an attachment);
  ``GET /api/s/{sid}/jobs/{job}/zip`` the protected copies of a protect job.

Uploads stream to the session's folder in 1 MiB chunks and stop at ``max_upload_mb`` with a clear message. Bad
input gets the cloak's own ``error:`` line (HTTP 400), as the command line prints it. Requests whose Host is not
this machine's loopback name are refused (no DNS rebinding), and so are cross-site writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import shutil
import signal
import socket
import tempfile
import webbrowser
from pathlib import Path

from aiohttp import web

from opom.errors import UserError
from opom.web import DEFAULT_MAX_UPLOAD_MB, tasks
from opom.web.jobs import Job, Session, Workspace, local_paths, new_id

STATIC = Path(__file__).parent / "static"
HOST = "127.0.0.1"
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "[::1]"}
CHUNK = 1 << 20
MAX_FIELD = 4096  # bytes of a form field that is not a file
CHOICES = ("match", "largest", "all")

WORKSPACE = web.AppKey("workspace", Workspace)
MAX_UPLOAD = web.AppKey("max_upload", int)
DETECTOR = web.AppKey("detector", object)


class TooLarge(UserError):
    """An upload over the server's limit."""


def json_error(message: str, status: int = 400) -> web.Response:
    message = message if message.startswith("error:") else f"error: {message}"
    return web.json_response({"error": message}, status=status)


# ------------------------------------------------------------------------------------------------ guards


@web.middleware
async def loopback_only(request: web.Request, handler):
    """Only pages of this server may talk to it: the Host must be a loopback name; writes must be same-origin."""
    host = (request.host or "").rsplit(":", 1)[0] if not (request.host or "").startswith("[") else \
        (request.host or "").split("]")[0] + "]"
    if host not in LOOPBACK_NAMES:
        return web.Response(status=403, text="opom web answers only on this computer (http://127.0.0.1)")
    if request.method not in ("GET", "HEAD") and request.headers.get("Sec-Fetch-Site", "same-origin") not in (
            "same-origin", "none"):
        return web.Response(status=403, text="cross-site requests are refused")
    try:
        return await handler(request)
    except TooLarge as err:
        return json_error(str(err), 413)
    except UserError as err:
        return json_error(str(err))


def the_session(request: web.Request) -> Session:
    session = request.app[WORKSPACE].session(request.match_info["sid"])
    if session is None:
        raise web.HTTPNotFound(text='{"error": "error: this page\'s session has ended (the server was restarted or '
                                    'the tab closed): reload the page"}', content_type="application/json")
    return session


# ----------------------------------------------------------------------------------------------- uploads


async def receive(request: web.Request, folder: Path, max_files: int | None = None) -> tuple[dict, list[Path]]:
    """Stream a multipart upload into ``folder``: ``(form fields, files written)``; stops at the size limit."""
    limit = request.app[MAX_UPLOAD]
    mb = limit / 2**20

    def too_large() -> TooLarge:
        return TooLarge(f"the upload is larger than this server's limit of {mb:g} MB: send fewer or smaller "
                        f"files, or start it with `opom web --max-upload-mb N`")

    if request.content_length is not None and request.content_length > limit + 64 * 1024:
        raise too_large()
    if not request.content_type.startswith("multipart/"):
        raise UserError("expected a multipart/form-data upload")
    fields: dict[str, str] = {}
    files: list[Path] = []
    total = 0
    folder.mkdir(parents=True, exist_ok=True)
    reader = await request.multipart()
    async for part in reader:
        if part.filename is None:
            value = await part.read_chunk(MAX_FIELD)
            fields[part.name or ""] = value.decode("utf-8", "replace")
            continue
        if max_files is not None and len(files) >= max_files:
            raise UserError(f"send one file here, not several (got more than {max_files})")
        path = unique(folder / tasks.safe_name(part.filename))
        with open(path, "wb") as f:
            while chunk := await part.read_chunk(CHUNK):
                total += len(chunk)
                if total > limit:
                    raise too_large()
                f.write(chunk)
        files.append(path)
    return fields, files


def unique(path: Path) -> Path:
    """``path``, or ``name (2).ext``, ``name (3).ext``, ... when two uploads share a name."""
    k, candidate = 1, path
    while candidate.exists():
        k += 1
        candidate = path.with_name(f"{path.stem} ({k}){path.suffix}")
    return candidate


def number(fields: dict, key: str, cast, what: str):
    raw = (fields.get(key) or "").strip()
    if not raw:
        return None
    try:
        return cast(raw)
    except ValueError:
        raise UserError(f"{what} must be a number, got {raw!r}") from None


# ------------------------------------------------------------------------------------------------ routes


async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})


async def new_session(request: web.Request) -> web.Response:
    session = request.app[WORKSPACE].new_session()
    return web.json_response({"session": session.id, "max_upload_mb": request.app[MAX_UPLOAD] / 2**20})


async def close_session(request: web.Request) -> web.Response:
    closed = await asyncio.to_thread(request.app[WORKSPACE].close_session, request.match_info["sid"])
    return web.json_response({"closed": closed})


async def start_job(request: web.Request, kind: str, with_files: bool, work) -> web.Response:
    """Receive the upload into a new job's folder, then queue ``work(session, job, fields, files)``."""
    session = the_session(request)
    job_id = new_id()
    job = Job(job_id, kind, session.job_folder(job_id))
    fields, files = {}, []
    try:
        if with_files:
            fields, files = await receive(request, job.folder / "uploads")
        task = work(session, job, fields, files)  # checks the form; raises UserError before anything is queued
    except BaseException:
        shutil.rmtree(job.folder, ignore_errors=True)
        raise
    request.app[WORKSPACE].submit(session, job, task)
    return web.json_response({"job": job.id, "files": [p.name for p in files]}, status=202)


async def enroll(request: web.Request) -> web.Response:
    detector = request.app.get(DETECTOR)

    def work(session, job, fields, files):
        if not files:
            raise UserError("no photos: drop 3-10 photos of yourself")
        name = (fields.get("name") or "").strip() or "me"
        eps = number(fields, "eps", float, "the largest change per pixel (eps)")
        iterations = number(fields, "iterations", int, "iterations")
        strength = (fields.get("strength") or "").strip() or None
        return lambda job: tasks.enroll_task(session, job, files, name, eps, iterations, detector, strength)

    return await start_job(request, "enroll", True, work)


async def protect(request: web.Request) -> web.Response:
    detector = request.app.get(DETECTOR)

    def work(session, job, fields, files):
        if not files:
            raise UserError("no files: drop photos or videos to protect")
        with session.lock:
            mask = session.mask
        if mask is None:
            raise UserError("no mask yet: make yours in step 1 or load your mask file")
        choose = fields.get("choose") or "match"
        if choose not in CHOICES:
            raise UserError(f"choose must be one of {', '.join(CHOICES)}, got {choose!r}")
        strip = fields.get("strip_location", "") in ("1", "true", "on")
        return lambda job: tasks.protect_task(session, job, files, mask, choose, strip, detector)

    return await start_job(request, "protect", True, work)


async def check(request: web.Request) -> web.Response:
    detector = request.app.get(DETECTOR)
    return await start_job(request, "check", False,
                           lambda session, job, fields, files: lambda job: tasks.check_task(session, job, detector))


async def job_status(request: web.Request) -> web.Response:
    session = the_session(request)
    job = session.jobs.get(request.match_info["job"])
    if job is None:
        raise web.HTTPNotFound(text='{"error": "error: no such job"}', content_type="application/json")
    return web.json_response(job.status())


async def job_zip(request: web.Request) -> web.StreamResponse:
    session = the_session(request)
    job = session.jobs.get(request.match_info["job"])
    if job is None or job.kind != "protect" or job.state != "done":
        raise web.HTTPNotFound(text="no finished protect job here")
    path = await asyncio.to_thread(tasks.zip_outputs, job)
    return web.FileResponse(path, headers={"Content-Disposition": 'attachment; filename="opom_protected.zip"'})


async def load_mask(request: web.Request) -> web.Response:
    session = the_session(request)
    folder = session.folder / "masks" / new_id()
    try:
        _, files = await receive(request, folder, max_files=1)
        if not files:
            raise UserError("no mask file: choose the .safetensors file that `opom enroll` or this page saved")
        info = await asyncio.to_thread(tasks.use_mask, session, files[0])
    except UserError as err:
        shutil.rmtree(folder, ignore_errors=True)
        return json_error(local_paths(str(err), session), 413 if isinstance(err, TooLarge) else 400)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return web.json_response(info)


async def save_mask(request: web.Request) -> web.StreamResponse:
    session = the_session(request)
    with session.lock:
        mask = session.mask
    if mask is None or not mask.is_file():
        raise web.HTTPNotFound(text="no mask yet")
    return web.FileResponse(mask, headers={"Content-Disposition": f'attachment; filename="{mask.name}"'})


async def session_file(request: web.Request) -> web.StreamResponse:
    session = the_session(request)
    root = session.folder.resolve()
    path = (root / request.match_info["path"]).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise web.HTTPNotFound(text="no such file")
    headers = {"Cache-Control": "no-store"}
    if request.query.get("download"):
        headers["Content-Disposition"] = f'attachment; filename="{path.name}"'
    return web.FileResponse(path, headers=headers)


def create_app(root: Path, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, detector=None) -> web.Application:
    """The page's application; sessions live under ``root``. ``detector``: a face detector for every job (tests)."""
    app = web.Application(middlewares=[loopback_only], client_max_size=MAX_FIELD * 4)
    workspace = Workspace(root)
    app[WORKSPACE] = workspace
    app[MAX_UPLOAD] = int(max_upload_mb * 2**20)
    if detector is not None:
        app[DETECTOR] = detector
    app.router.add_get("/", index)
    app.router.add_static("/static", STATIC)
    app.router.add_post("/api/session", new_session)
    app.router.add_post("/api/s/{sid}/close", close_session)
    app.router.add_post("/api/s/{sid}/enroll", enroll)
    app.router.add_post("/api/s/{sid}/protect", protect)
    app.router.add_post("/api/s/{sid}/check", check)
    app.router.add_post("/api/s/{sid}/mask", load_mask)
    app.router.add_get("/api/s/{sid}/mask", save_mask)
    app.router.add_get("/api/s/{sid}/jobs/{job}", job_status)
    app.router.add_get("/api/s/{sid}/jobs/{job}/zip", job_zip)
    app.router.add_get("/api/s/{sid}/files/{path:.+}", session_file)

    async def stop_worker(app: web.Application) -> None:
        workspace.stop()

    app.on_cleanup.append(stop_worker)
    return app


# ---------------------------------------------------------------------------------------------- serving


def bind(port: int) -> socket.socket:
    """A listening socket on 127.0.0.1 (``port`` 0: a free port the system picks)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((HOST, port))
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} is in use: choose another --port, or leave it out for a free one") from None
        raise
    sock.listen(128)
    return sock


async def _serve(root: Path, sock: socket.socket, open_browser: bool, max_upload_mb: float) -> None:
    app = create_app(root, max_upload_mb)
    runner = web.AppRunner(app, access_log=None)  # no log of requests: file names are private
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):  # SIGHUP: its terminal closed
        if sig is None:
            continue
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows
            loop.add_signal_handler(sig, stop.set)
    try:
        await web.SockSite(runner, sock).start()
        url = f"http://{HOST}:{sock.getsockname()[1]}/"
        print(f"opom web: {url}  (this computer only; Ctrl-C stops it)\n"
              f"  uploads and results stay in {root} and are removed when it stops", flush=True)
        if open_browser:
            await asyncio.to_thread(webbrowser.open, url)
        await stop.wait()
    finally:
        await runner.cleanup()


def serve(port: int = 0, open_browser: bool = True, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB) -> int:
    """Run the page until Ctrl-C / SIGTERM; the temporary folder of uploads is removed on the way out."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port must lie in 0..65535, got {port}")
    if not max_upload_mb > 0:
        raise UserError(f"--max-upload-mb must be > 0, got {max_upload_mb}")
    sock = bind(port)
    root = Path(tempfile.mkdtemp(prefix="opom-web-")).resolve()
    try:
        asyncio.run(_serve(root, sock, open_browser, max_upload_mb))
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
        shutil.rmtree(root, ignore_errors=True)
        print(f"opom web: stopped; removed {root}", flush=True)
    return 0
