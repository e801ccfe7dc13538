"""A pull's progress: the stages, the counters, the in-process job every request of one pull
subscribes to, and the tracker that publishes progress to those subscribers and to the file
other hub processes follow (``staging/pull-<id>.progress.json``)."""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import enum
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .sources.base import PlannedFile
from .store import ModelRecord

log = logging.getLogger("swiftmesh.hub")

# Publish to subscribers at most this often, seconds; to the progress file at most this often.
PROGRESS_EVERY_S = 0.1
PROGRESS_FILE_EVERY_S = 0.4


class Stage(enum.IntEnum):
    """Mirror of ``PullProgress.Stage``."""

    UNSPECIFIED = 0
    RESOLVING = 1
    DOWNLOADING = 2
    VERIFYING = 3
    CONVERTING = 4
    COMMITTING = 5


@dataclass
class Progress:
    """A pull's progress (bytes and files done/total, rate in bytes/s, ETA in seconds)."""

    stage: Stage = Stage.UNSPECIFIED
    bytes_done: int = 0
    bytes_total: int = 0
    files_done: int = 0
    files_total: int = 0
    bytes_per_second: float = 0.0
    eta_s: float | None = None
    current_file: str = ""
    following: bool = False
    bytes_resumed: int = 0


class PullJob:
    """A pull running in a thread. Requests subscribe to its progress; when the last subscriber
    leaves before it finishes, it is cancelled (its partial files stay for a later resume)."""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self.future: concurrent.futures.Future[ModelRecord] = concurrent.futures.Future()
        self.cancel = threading.Event()
        self._lock = threading.Lock()
        self._subs: dict[int, tuple[Callable[[Progress], None], bool]] = {}
        self._next = 0
        self.latest: Progress | None = None
        self.ever_subscribed = False

    def subscribe(self, callback: Callable[[Progress], None], following: bool = False) -> int:
        """Call ``callback`` with every progress from now on (and at once with the latest one);
        ``following`` marks what this subscriber sees as following another request's pull.
        Returns the token for :meth:`unsubscribe`."""
        with self._lock:
            token = self._next
            self._next += 1
            self._subs[token] = (callback, following)
            self.ever_subscribed = True
            latest = self.latest
        if latest is not None:
            callback(dataclasses.replace(latest, following=latest.following or following))
        return token

    def unsubscribe(self, token: int) -> None:
        """Stop calling the subscriber of ``token``; cancel the pull when it was the last one."""
        with self._lock:
            self._subs.pop(token, None)
            empty = not self._subs
        if empty and not self.future.done():
            log.info("pull of %s: no client left, cancelling (partial files are kept)", self.model_id)
            self.cancel.set()

    def publish(self, progress: Progress) -> None:
        """Hand ``progress`` to every subscriber (a failing subscriber is logged, not raised)."""
        with self._lock:
            self.latest = progress
            subs = list(self._subs.values())
        for cb, following in subs:
            try:
                cb(dataclasses.replace(progress, following=progress.following or following))
            except Exception:
                log.exception("progress subscriber failed")


def done_job(model_id: str, rec: ModelRecord) -> PullJob:
    """A job that is already finished with ``rec`` (a pull of a model the cache holds)."""
    job = PullJob(model_id)
    job.future.set_result(rec)
    return job


class Tracker:
    """Counts a pull's bytes and files, computes rate and ETA over a sliding window, publishes to
    the job (every 0.1 s at most) and to the progress file other hub processes follow."""

    def __init__(self, job: PullJob, progress_file: Path, files: Sequence[PlannedFile]) -> None:
        self.job = job
        self.progress_file = progress_file
        self.p = Progress(stage=Stage.RESOLVING, files_total=len(files),
                          bytes_total=sum(f.size or 0 for f in files))
        self._lock = threading.Lock()
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self._transferred = 0
        self._last_emit = 0.0
        self._last_file = 0.0
        self._active: dict[str, int] = {}

    def stage(self, stage: Stage, current: str = "") -> None:
        """Enter ``stage`` (optionally naming the current file) and publish at once."""
        with self._lock:
            self.p.stage = stage
            if current:
                self.p.current_file = current
        self.emit(force=True)

    def resumed(self, n: int) -> None:
        """``n`` bytes of a file were already on disk (a resumed partial file)."""
        with self._lock:
            self.p.bytes_resumed += n
            self.p.bytes_done += n
        self.emit()

    def add(self, n: int) -> None:
        """``n`` more bytes arrived."""
        with self._lock:
            self.p.bytes_done += n
            self._transferred += n
        now = time.monotonic()
        if now - self._last_emit >= PROGRESS_EVERY_S:
            self.emit()

    def start_file(self, path: str) -> None:
        """A transfer of ``path`` starts."""
        with self._lock:
            self._active[path] = 1
            self.p.current_file = path

    def file_done(self, path: str, size: int, known_size: int | None, counted: bool = True) -> None:
        """``path`` is complete (``size`` bytes; ``known_size``: what the plan said, None when the
        source did not tell; ``counted``: its bytes went through :meth:`add`)."""
        with self._lock:
            self.p.files_done += 1
            self._active.pop(path, None)
            if known_size is None:
                self.p.bytes_total += size
                if not counted:
                    self.p.bytes_done += size
            if self._active:
                self.p.current_file = next(iter(self._active))
        self.emit()

    def skip_file(self, path: str, size: int, known_size: int | None, resumed: bool = True) -> None:
        """A file that needs no transfer (in the cache by hash: counted as resumed; or a local file)."""
        with self._lock:
            self.p.bytes_done += size
            if resumed:
                self.p.bytes_resumed += size
            if known_size is None:
                self.p.bytes_total += size
            self.p.files_done += 1
        self.emit()

    def snapshot(self) -> Progress:
        """A copy of the progress with the current rate (bytes/s over the last 5 s) and ETA (s)."""
        now = time.monotonic()
        with self._lock:
            self._samples.append((now, self._transferred))
            while len(self._samples) > 2 and now - self._samples[0][0] > 5.0:
                self._samples.popleft()
            t0, b0 = self._samples[0]
            rate = (self._transferred - b0) / (now - t0) if now - t0 > 0.2 else self.p.bytes_per_second
            self.p.bytes_per_second = max(rate, 0.0)
            remaining = max(self.p.bytes_total - self.p.bytes_done, 0)
            self.p.eta_s = remaining / rate if rate > 0 else None
            return dataclasses.replace(self.p)

    def emit(self, force: bool = False) -> None:
        """Publish a snapshot (at most every 0.1 s unless ``force``) and write the progress file."""
        now = time.monotonic()
        if not force and now - self._last_emit < PROGRESS_EVERY_S:
            return
        self._last_emit = now
        snap = self.snapshot()
        self.job.publish(snap)
        if force or now - self._last_file >= PROGRESS_FILE_EVERY_S:
            self._last_file = now
            with contextlib.suppress(OSError):
                tmp = self.progress_file.with_name(f".{self.progress_file.name}.{os.getpid()}.{threading.get_ident()}")
                d = dataclasses.asdict(snap)
                d["pid"] = os.getpid()
                tmp.write_text(json.dumps(d))
                os.replace(tmp, self.progress_file)


def progress_from_file(path: Path) -> Progress | None:
    """The progress another process published at ``path`` (marked ``following``), or None when
    the file is missing or unreadable."""
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    d.pop("pid", None)
    try:
        p = Progress(**d)
        p.stage = Stage(p.stage)
    except (TypeError, ValueError):
        return None
    p.following = True
    return p
