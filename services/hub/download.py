"""Transfers of single files into resumable partial files, with retries and verification.

One :class:`Fetcher` per hub. ``fetch(origin, part, ...)`` brings the bytes of one source file
into ``part`` (``tmp/<key>.part``), continuing from the bytes already there:

* ``http``: an HTTP GET with ``Range: bytes=<offset>-`` and ``If-Range`` (the ETag or
  Last-Modified seen when the partial file was started, kept in ``<part>.json``), so a file that
  changed on the server restarts from zero instead of being spliced. 408/429/5xx answers,
  connection errors and short bodies are retried with exponential backoff and jitter (tenacity;
  ``Retry-After`` honoured), each retry resuming from the bytes on disk.
* ``local``: a copy from a local path (resumes the same way; the source's size and mtime are the
  validator).
* ``hub``: ``ReadModelFile`` from another hub (``hub://host:port/model``), from the offset.

The sha256 of the whole file is computed while it arrives (the prefix already on disk is
re-read once after a restart) and checked against the expected hash when the source gives
one; a git blob sha1 (Hugging Face non-LFS files) is checked the same way. Bytes are written
with unbuffered ``write`` calls, so after a ``kill -9`` the partial file holds exactly what
arrived and nothing else.
"""

from __future__ import annotations

import contextlib
import email.utils
import errno
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpcore
import httpx
import tenacity

from swiftmesh.runtime.durable import fsync_file, write_atomic
from swiftmesh.runtime.errors import (
    Cancelled,
    DataLoss,
    FailedPrecondition,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    SwiftMeshError,
    Unavailable,
)

if TYPE_CHECKING:
    from .peers import PeerHubs
    from .redirects import RedirectPolicy

log = logging.getLogger("swiftmesh.hub.download")

# httpcore reads an HTTP/1.1 body READ_NUM_BYTES (64 KiB) per recv; at loopback/LAN speeds the
# per-read Python overhead then costs more CPU than sha256 (bench/hub: hub-http fell from 0.90 to
# 0.72 of curl without this). 1 MiB is a cap, not a wait: a smaller read still returns at once.
# ``HTTP11Connection`` and its ``READ_NUM_BYTES`` are httpcore's public names (httpcore.__all__);
# httpx offers no per-client setting for it, so it is raised for the process (harmless for others).
HTTP_READ_BYTES = 1 << 20
if getattr(httpcore.HTTP11Connection, "READ_NUM_BYTES", HTTP_READ_BYTES) < HTTP_READ_BYTES:
    httpcore.HTTP11Connection.READ_NUM_BYTES = HTTP_READ_BYTES

# Read granularity of local copies, bytes.
COPY_CHUNK = 4 << 20
# Status codes of another hub's ReadModelFile after which a hub:// transfer is retried (resuming).
RETRYABLE_HUB_CODES = frozenset({"UNAVAILABLE", "CANCELLED", "UNKNOWN", "INTERNAL", "DEADLINE_EXCEEDED",
                                 "ABORTED", "RESOURCE_EXHAUSTED"})
# ReadModelFile chunk size of hub:// transfers, bytes (1 MiB moved a GiB with about half the CPU of 4 MiB).
HUB_CHUNK = 1 << 20
USER_AGENT = f"swiftmesh-hub/0.1 (pid {os.getpid()})"


class PullCancelled(Cancelled):
    """The pull was cancelled (its last client went away, or the hub is stopping)."""

    def __init__(self, message: str = "pull cancelled") -> None:
        super().__init__(message, reason="PULL_CANCELLED")


class RetryableError(Exception):
    """A transfer failure worth retrying (connection reset, 5xx, short body)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class FetchResult:
    """What a fetch produced: the part file's sha256 and size, bytes moved over the wire in this
    call, and bytes that were already on disk when it started."""

    sha256: str
    size: int
    transferred: int
    resumed: int


class _Hashes:
    """sha256 (and optionally git blob sha1) of a file being appended to."""

    def __init__(self, git_size: int | None) -> None:
        self.sha256 = hashlib.sha256()
        self.git = None
        if git_size is not None:
            self.git = hashlib.sha1(usedforsecurity=False)
            self.git.update(f"blob {git_size}\0".encode())
        self.count = 0

    def update(self, data: bytes | memoryview) -> None:
        """Add ``data`` to every hash."""
        self.sha256.update(data)
        if self.git is not None:
            self.git.update(data)
        self.count += len(data)


def _hash_prefix(part: Path, size: int, git_size: int | None, cancel: threading.Event | None) -> _Hashes:
    h = _Hashes(git_size)
    with open(part, "rb") as f:
        remaining = size
        while remaining > 0:
            if cancel is not None and cancel.is_set():
                raise PullCancelled()
            data = f.read(min(COPY_CHUNK, remaining))
            if not data:
                break
            h.update(data)
            remaining -= len(data)
    return h


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _wait(base: tenacity.wait.wait_base) -> Callable[[tenacity.RetryCallState], float]:
    def wait(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        delay = base(state)
        if isinstance(exc, RetryableError) and exc.retry_after is not None:
            return min(max(delay, exc.retry_after), 120.0)
        return delay

    return wait


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, (RetryableError, httpx.TransportError))


def http_status_error(status: int, url: str, retry_after: float | None = None) -> Exception:
    """The error for an HTTP status: RetryableError for 408/429/5xx, a domain error otherwise."""
    if status in (408, 425, 429) or status >= 500:
        return RetryableError(f"HTTP {status} from {url}", retry_after)
    if status in (404, 410):
        return NotFound(f"{url}: HTTP {status} (not found)", field_violations=[("source", f"HTTP {status}")],
                        reason="SOURCE_NOT_FOUND")
    if status in (401, 403):
        return PermissionDenied(f"{url}: HTTP {status} (access denied; check the token)", reason="SOURCE_DENIED")
    return FailedPrecondition(f"{url}: unexpected HTTP {status}", reason="SOURCE_HTTP_ERROR")


class Fetcher:
    """Downloads single files (see the module docstring). Thread-safe; one per hub.

    Args:
        retries: retries after the first attempt (``settings.hub.download_retries``).
        header_provider: ``(origin) -> extra headers`` (auth for hf:// and ms:// origins).
        peers: the client of other hubs, for ``hub`` origins (None: such origins fail).
        backoff_initial / backoff_max: exponential backoff, seconds (jittered).
        redirects: where HTTP requests may be redirected (:class:`.redirects.RedirectPolicy`;
            None: any host).
    """

    def __init__(
        self,
        retries: int = 5,
        header_provider: Callable[[dict], dict[str, str]] | None = None,
        peers: PeerHubs | None = None,
        backoff_initial: float = 0.5,
        backoff_max: float = 20.0,
        redirects: RedirectPolicy | None = None,
    ) -> None:
        self.retries = retries
        self.header_provider = header_provider or (lambda origin: {})
        self.peers = peers
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.redirects = redirects
        self.http = httpx.Client(
            follow_redirects=True,
            timeout=httpx.Timeout(30.0, read=120.0),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
            event_hooks={"request": [redirects.on_request]} if redirects is not None else None,
        )

    def close(self) -> None:
        """Close the HTTP client (its pooled connections)."""
        self.http.close()

    # -----------------------------------------------------------------------------------
    def retrying(self) -> tenacity.Retrying:
        """The retry policy of one transfer: ``retries`` more attempts on RetryableError and
        transport errors, exponential backoff with jitter, Retry-After honoured (at most 120 s)."""
        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.retries + 1),
            wait=_wait(tenacity.wait_exponential_jitter(initial=self.backoff_initial, max=self.backoff_max,
                                                        jitter=self.backoff_initial)),
            retry=tenacity.retry_if_exception(_retryable),
            reraise=True,
            before_sleep=lambda s: log.warning(
                "retrying in %.1fs after attempt %d: %s", s.next_action.sleep if s.next_action else 0,
                s.attempt_number, s.outcome.exception() if s.outcome else "",
            ),
        )

    def fetch(
        self,
        origin: dict,
        part: Path,
        *,
        size: int | None = None,
        sha256: str | None = None,
        git_sha1: str | None = None,
        on_bytes: Callable[[int], None] = lambda n: None,
        on_resume: Callable[[int], None] = lambda n: None,
        cancel: threading.Event | None = None,
    ) -> FetchResult:
        """Bring the whole file of ``origin`` into ``part`` and verify it.

        ``size``/``sha256``/``git_sha1``: what the source says (None: unknown). ``on_bytes(n)`` is
        called for every ``n`` bytes received; ``on_resume(offset)`` once with the bytes already on disk
        (usable partial file) when the transfer starts, and ``on_resume(-offset)`` when they turn out
        unusable (the server ignored the range), so the resumed figure stays honest. Raises Cancelled
        (``cancel`` set), DataLoss (hash or size mismatch after a full re-download),
        NotFound/PermissionDenied/FailedPrecondition (the source refused), Unavailable (retries
        exhausted), ResourceExhausted (reason DISK_FULL: no space left; or raised by ``on_bytes``;
        the partial file is removed then).
        """
        kind = origin.get("kind")
        once = {"http": self._http_once, "local": self._local_once, "hub": self._hub_once}.get(kind)
        if once is None:
            raise FailedPrecondition(f"unknown origin kind {kind!r}")
        meta_path = part.with_name(part.name + ".json")
        validator = self._validator(origin)
        state = {"hashes": None, "resumed": None, "transferred": 0}
        git_size = size if git_sha1 else None

        def prepare() -> int:
            """Offset to resume from (truncating an unusable partial file); sets up the hashes."""
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                meta = None
            offset = part.stat().st_size if part.exists() else 0
            if offset and (meta is None or meta.get("validator") != validator or (size is not None and offset > size)):
                offset = 0
            if offset == 0:
                with open(part, "wb"):
                    pass
                write_atomic(meta_path, json.dumps({"origin": origin, "validator": validator}))
            h = state["hashes"]
            if h is None or h.count != offset:
                h = _hash_prefix(part, offset, git_size, cancel) if offset else _Hashes(git_size)
                state["hashes"] = h
            if state["resumed"] is None:
                state["resumed"] = offset
                on_resume(offset)
            return offset

        def sink(data: bytes | memoryview, out) -> None:
            if cancel is not None and cancel.is_set():
                raise PullCancelled()
            view = memoryview(data)
            while view:  # an unbuffered write may be short (a filling disk): the rest, or ENOSPC
                view = view[out.write(view):]
            state["hashes"].update(data)
            state["transferred"] += len(data)
            on_bytes(len(data))

        def restart() -> None:
            with open(part, "wb"):
                pass
            state["hashes"] = _Hashes(git_size)
            if state["resumed"]:  # the bytes reported as resumed were not kept after all
                on_resume(-state["resumed"])
                state["resumed"] = 0

        for full_retry in range(2):
            try:
                for attempt in self.retrying():
                    with attempt:
                        offset = prepare()
                        once(origin, part, offset, size, sink, restart)
            except (OSError, ResourceExhausted) as e:
                if not isinstance(e, ResourceExhausted) and not is_disk_full(e):
                    raise
                # no room (disk full, or the quota while a file of unknown size grows): this partial
                # file cannot complete, and it holds the space the cache's database needs
                for p in (part, meta_path):
                    with contextlib.suppress(OSError):
                        p.unlink()
                raise (e if isinstance(e, ResourceExhausted) else disk_full(part)) from None
            except tenacity.RetryError as e:  # pragma: no cover - reraise=True makes this rare
                raise Unavailable(f"{_describe(origin)}: retries exhausted: {e}") from e
            except RetryableError as e:
                raise Unavailable(f"{_describe(origin)}: {e} (after {self.retries} retries)",
                                  reason="SOURCE_UNAVAILABLE") from e
            except httpx.TransportError as e:
                raise Unavailable(f"{_describe(origin)}: {type(e).__name__}: {e} (after {self.retries} retries)",
                                  reason="SOURCE_UNAVAILABLE") from e
            h = state["hashes"]
            got_size = part.stat().st_size
            problems = []
            if size is not None and got_size != size:
                problems.append(f"size {got_size} != expected {size}")
            digest = h.sha256.hexdigest()
            if sha256 and digest != sha256:
                problems.append(f"sha256 {digest} != expected {sha256}")
            if git_sha1 and h.git is not None and h.git.hexdigest() != git_sha1:
                problems.append(f"git sha1 {h.git.hexdigest()} != expected {git_sha1}")
            if not problems:
                fsync_file(part)  # its bytes are on disk before it becomes a blob
                with contextlib.suppress(OSError):
                    meta_path.unlink()
                return FetchResult(digest, got_size, state["transferred"], state["resumed"] or 0)
            log.warning("%s: %s%s", _describe(origin), "; ".join(problems),
                        ", downloading again from zero" if full_retry == 0 else "")
            restart()
            with contextlib.suppress(OSError):
                meta_path.unlink()
        raise DataLoss(f"{_describe(origin)}: {'; '.join(problems)}", reason="CHECKSUM_MISMATCH")

    # -----------------------------------------------------------------------------------
    def _validator(self, origin: dict) -> str:
        kind = origin["kind"]
        if kind == "local":
            try:
                st = os.stat(origin["path"])
            except OSError:
                return ""
            return f"{st.st_size}:{st.st_mtime_ns}"
        if kind == "hub":
            return origin.get("sha256", "")
        return origin.get("etag") or origin.get("last_modified") or origin.get("sha256") or ""

    def _http_once(self, origin: dict, part: Path, offset: int, size: int | None, sink, restart) -> None:
        url = origin["url"]
        headers = dict(self.header_provider(origin))
        if size is not None and offset >= size:
            # complete already (crash between the last write and the rename)
            return
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if origin.get("etag") and not origin["etag"].startswith("W/"):
                headers["If-Range"] = origin["etag"]
            elif origin.get("last_modified"):
                headers["If-Range"] = origin["last_modified"]
        with self.http.stream("GET", url, headers=headers) as r:
            if r.status_code == 416 and offset:
                restart()
                raise RetryableError(f"{url}: range {offset}- not satisfiable, restarting")
            if r.status_code not in (200, 206):
                raise http_status_error(r.status_code, url, parse_retry_after(r.headers.get("retry-after")))
            if offset and r.status_code == 200:
                log.info("%s: server ignored the range (file changed or no range support); from zero", url)
                restart()
                offset = 0
            elif r.status_code == 206:
                start = _content_range_start(r.headers.get("content-range"))
                if start != offset:
                    restart()
                    raise RetryableError(f"{url}: asked for bytes {offset}-, got {r.headers.get('content-range')}")
            length = r.headers.get("content-length")
            expected = offset + int(length) if length and length.isdigit() else size
            got = offset
            with open(part, "ab", buffering=0) as out:
                for chunk in r.iter_raw():  # as httpcore reads it (HTTP_READ_BYTES at most; re-chunking costs more)
                    sink(chunk, out)
                    got += len(chunk)
            if expected is not None and got < expected:
                raise RetryableError(f"{url}: connection ended at byte {got} of {expected}")

    def _local_once(self, origin: dict, part: Path, offset: int, size: int | None, sink, restart) -> None:
        src = Path(origin["path"])
        try:
            f = open(src, "rb")  # noqa: SIM115
        except FileNotFoundError:
            raise NotFound(f"{src} does not exist", field_violations=[("source", "no such file")],
                           reason="SOURCE_NOT_FOUND") from None
        except PermissionError:
            raise PermissionDenied(f"{src} is not readable by the hub", reason="SOURCE_DENIED") from None
        with f, open(part, "ab", buffering=0) as out:
            f.seek(offset)
            while data := f.read(COPY_CHUNK):
                sink(data, out)

    def _hub_once(self, origin: dict, part: Path, offset: int, size: int | None, sink, restart) -> None:
        if self.peers is None:
            raise FailedPrecondition("hub:// sources need the client of other hubs (Fetcher.peers)")
        if size is not None and offset >= size:
            return
        target = origin["target"]
        chunks = self.peers.read_file(target, origin["model"], origin["path"], offset=offset, chunk_size=HUB_CHUNK)
        with contextlib.closing(chunks), open(part, "ab", buffering=0) as out:
            while True:
                try:
                    item = next(chunks, None)
                except SwiftMeshError as err:  # from the other hub (not from sink)
                    if err.code_name in RETRYABLE_HUB_CODES:
                        raise RetryableError(f"hub {target}: {err.code_name}: {err.message}") from err
                    raise
                if item is None:
                    return
                data, sha256 = item
                if sha256 and origin.get("sha256") and sha256 != origin["sha256"]:
                    raise FailedPrecondition(f"{origin['model']}/{origin['path']} changed on {target} during the pull")
                sink(data, out)


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the filesystem is out of space (ENOSPC, EDQUOT, SQLite's "disk is full")."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(exc, sqlite3.OperationalError) and "full" in str(exc)


def disk_full(path: Path, needed: int | None = None) -> ResourceExhausted:
    """The error of a write under ``path`` that ran out of space (or, with ``needed``, would):
    RESOURCE_EXHAUSTED (reason DISK_FULL) naming the path and the bytes still free on its filesystem."""
    where = Path(path)
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        free = -1
    what = "no space left" if needed is None else f"{needed} more bytes needed"
    return ResourceExhausted(
        f"{what} on the filesystem of {path} ({free} bytes free there): free space, move "
        "hub.cache_dir to a larger disk, or set hub.quota_bytes below its size",
        reason="DISK_FULL", metadata={"path": str(path), "free_bytes": str(free)},
    )


def check_free_space(path: Path, needed: int) -> None:
    """Raise :func:`disk_full` when the filesystem of ``path`` has fewer than ``needed`` bytes free
    (so a pull of known size fails before it fills the disk others share)."""
    if needed > 0 and shutil.disk_usage(path).free < needed:
        raise disk_full(path, needed)


def _content_range_start(value: str | None) -> int | None:
    # "bytes 100-199/1000"
    if not value or not value.startswith("bytes "):
        return None
    try:
        return int(value[6:].split("-", 1)[0])
    except ValueError:
        return None


def _describe(origin: dict) -> str:
    kind = origin.get("kind")
    if kind == "http":
        return origin["url"]
    if kind == "local":
        return origin["path"]
    if kind == "hub":
        return f"hub://{origin['target']}/{origin['model']}/{origin['path']}"
    return str(origin)
