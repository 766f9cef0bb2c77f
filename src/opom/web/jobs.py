"""The job model of ``opom web``: one session per browser tab, one job per enrolment / protection / check.

Everything a session owns lives in its own folder under the server's temporary root (``<root>/<session>/``; each
job in ``jobs/<job>/``), so two tabs never share a file. Jobs run one at a time on a single worker thread (the
cloak's work is CPU-bound: running two at once on the same cores only makes both slower) and report their state,
phase and progress to the page, which polls them. What a job prints (the cloak's own summary, exactly as the
command line prints it) is captured per job by :class:`ThreadOutput`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import queue
import re
import secrets
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from opom.cli_errors import user_error

log = logging.getLogger("opom.web")

STATES = ("queued", "running", "done", "failed", "cancelled")


def new_id() -> str:
    """An unguessable id (a session id is the only key to its files)."""
    return secrets.token_urlsafe(12)


@dataclass
class Job:
    """One unit of work of a session, with what the page shows about it."""

    id: str
    kind: str  # enroll | protect | check
    folder: Path
    state: str = "queued"
    phase: str = "waiting for the previous job to finish"
    done: int = 0
    total: int = 0
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    result: dict | None = None
    output: str = ""  # what the command line would have printed
    progress: Callable[[], tuple[int, int]] | None = None  # (done, total) while running, where measurable

    def status(self) -> dict:
        done, total = self.done, self.total
        if self.state == "running" and self.progress is not None:
            try:
                done, total = self.progress()
            except Exception:  # noqa: BLE001 - progress is a hint; a half-written file must not fail the poll
                pass
        now = self.finished or time.time()
        return {"id": self.id, "kind": self.kind, "state": self.state, "phase": self.phase, "done": done,
                "total": total, "elapsed_s": round(now - (self.started or now), 1), "error": self.error,
                "result": self.result, "output": self.output}


@dataclass
class Session:
    """One browser tab's work: its folder, its jobs, its current mask and what it protected."""

    id: str
    folder: Path
    jobs: dict[str, Job] = field(default_factory=dict)
    mask: Path | None = None  # the mask file protect uses (made by enroll here, or loaded)
    mask_info: dict | None = None
    enrolment_photos: list[Path] = field(default_factory=list)  # clean references for check
    protected: list[tuple[Path, Path]] = field(default_factory=list)  # (original, protected copy) photos
    lock: threading.Lock = field(default_factory=threading.Lock)

    def job_folder(self, job_id: str) -> Path:
        path = self.folder / "jobs" / job_id
        path.mkdir(parents=True)
        return path


class ThreadOutput(io.TextIOBase):
    """``sys.stdout`` stand-in: what the thread that made it prints goes to :attr:`buffer`; others write through."""

    def __init__(self, real):
        self.real = real
        self.buffer = io.StringIO()
        self.local = threading.local()
        self.local.buffer = self.buffer

    def write(self, text: str) -> int:
        buffer = getattr(self.local, "buffer", None)
        return (buffer or self.real).write(text)

    def flush(self) -> None:
        if getattr(self.local, "buffer", None) is None:
            self.real.flush()

    def writable(self) -> bool:
        return True


@contextlib.contextmanager
def captured_stdout() -> Iterator[io.StringIO]:
    """While it lasts, what this thread prints is kept (and not shown); other threads print as before."""
    real = sys.stdout
    router = ThreadOutput(real)
    sys.stdout = router
    try:
        yield router.buffer
    finally:
        if sys.stdout is router:
            sys.stdout = real


def describe_error(err: BaseException) -> str:
    """The ``error:`` line the command line prints for a user error; bugs are named as such (logged in full)."""
    cause = user_error(err)
    if cause is not None:
        return f"error: {cause}"
    log.error("opom web: unexpected failure\n%s", "".join(traceback.format_exception(err)))
    return f"error: unexpected failure (a bug; the terminal running `opom web` shows the details): " \
           f"{type(err).__name__}: {err}"


def local_paths(text: str | None, session: Session, job: Job | None = None) -> str | None:
    """``text`` with the server's temporary folders cut from the paths in it (``uploads/a.jpg``, ``me.safetensors``).

    Messages are the cloak's own; only the folders, which mean nothing to the person, go.
    """
    if not text:
        return text
    if job is not None:
        text = text.replace(f"{job.folder}/", "")
    return re.sub(re.escape(f"{session.folder}/") + r"(?:[^/\s'\"]+/)*", "", text)


class Workspace:
    """Sessions under one temporary root, and the worker thread that runs their jobs in order."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.sessions: dict[str, Session] = {}
        self.queue: queue.Queue = queue.Queue()
        self.lock = threading.Lock()
        self.worker = threading.Thread(target=self._work, name="opom-web-worker", daemon=True)
        self.worker.start()

    # ------------------------------------------------------------------------------------------ sessions

    def new_session(self) -> Session:
        sid = new_id()
        folder = self.root / sid
        folder.mkdir(parents=True)
        session = Session(sid, folder)
        with self.lock:
            self.sessions[sid] = session
        return session

    def session(self, sid: str) -> Session | None:
        with self.lock:
            return self.sessions.get(sid)

    def close_session(self, sid: str) -> bool:
        """Forget a session, cancel its queued jobs and remove its folder (its running job fails harmlessly)."""
        with self.lock:
            session = self.sessions.pop(sid, None)
        if session is None:
            return False
        for job in list(session.jobs.values()):
            if job.state == "queued":
                job.state, job.phase, job.finished = "cancelled", "cancelled: the page was closed", time.time()
        shutil.rmtree(session.folder, ignore_errors=True)
        return True

    # ---------------------------------------------------------------------------------------------- jobs

    def submit(self, session: Session, job: Job, work: Callable[[Job], dict]) -> Job:
        """Queue ``work(job)``; its returned dict becomes ``job.result``; raising fails the job with the message."""
        with session.lock:
            session.jobs[job.id] = job
        self.queue.put((session, job, work))
        return job

    def _work(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            session, job, work = item
            if job.state == "cancelled":
                continue
            job.state, job.started, job.phase = "running", time.time(), "starting"
            result, error = None, None
            with captured_stdout() as printed:
                try:
                    result = work(job)
                except BaseException as err:  # noqa: BLE001 - a job never stops the server
                    error = describe_error(err)
            job.output = local_paths(printed.getvalue(), session, job)
            job.result, job.error = result, local_paths(error, session, job)
            job.progress, job.finished = None, time.time()
            job.phase = "failed" if error else "done"
            job.state = "failed" if error else "done"  # last: a poller that sees the end sees all of it

    def stop(self) -> None:
        self.queue.put(None)
