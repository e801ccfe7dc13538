"""Where an HTTP download may be redirected: the source's own host and port, and the hosts of
``hub.redirect_allow_hosts``. Unset, that setting means the download CDNs of the public Hugging
Face and ModelScope endpoints when those are the endpoints in use (``huggingface.co`` answers a
``/resolve/`` URL with a redirect to ``cdn-lfs*.hf.co`` or ``cas-bridge.xethub.hf.co``; see
:func:`.sources.default_redirect_hosts`). A redirect from https to plain http is always refused.

The check runs as an httpx request hook on every request of the hub's HTTP client: the first
request of a call records its origin in ``request.extensions`` (httpx copies a request's
extensions into the request that follows its redirect) and every later hop is compared with it.
A refused hop is never sent. The same rule applies to URLs a source names for its files (a JSON
manifest's ``url``): :meth:`RedirectPolicy.check_link`.
"""

from __future__ import annotations

import fnmatch
import threading
import urllib.parse
from collections.abc import Callable, Sequence

import httpx

from swiftmesh.runtime.config import ConfigError
from swiftmesh.runtime.errors import PermissionDenied

SETTING = "hub.redirect_allow_hosts"
# The request extension holding (url, scheme, host, port) of the chain's first request.
_ORIGIN = "swiftmesh_redirect_origin"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _port(url: httpx.URL) -> int | None:
    return url.port or _DEFAULT_PORTS.get(url.scheme)


def parse_hosts(entries: Sequence[str]) -> list[tuple[str, int | None]]:
    """``["host", "host:port", "*.cdn.example", "[::1]:8080"]`` as (lower-case fnmatch pattern,
    port or None for any port). Raises ConfigError naming ``hub.redirect_allow_hosts`` and the entry."""
    out = []
    for entry in entries:
        text = str(entry).strip()
        parts = urllib.parse.urlsplit("//" + text)
        try:
            port = parts.port
        except ValueError:
            port = -1
        host = (parts.hostname or "").lower()
        if not host or port == -1 or parts.path or parts.query or parts.username:
            raise ConfigError(f"{SETTING}: {entry!r} is not a host, host:port or host pattern (e.g. '*.hf.co')")
        out.append((host, port))
    return out


class RedirectPolicy:
    """The redirect check of one hub's HTTP client (thread-safe).

    Args:
        allow_hosts: ``hub.redirect_allow_hosts`` (None: ``defaults()``, computed on the first
            redirect; ``[]``: the source's own host only).
        defaults: the hosts allowed when ``allow_hosts`` is None.

    Raises ConfigError for a malformed entry of ``allow_hosts``.
    """

    def __init__(self, allow_hosts: Sequence[str] | None, defaults: Callable[[], Sequence[str]] = list) -> None:
        self._patterns = parse_hosts(allow_hosts) if allow_hosts is not None else None
        self._defaults = defaults
        self._lock = threading.Lock()

    @property
    def patterns(self) -> list[tuple[str, int | None]]:
        """The allowed (host pattern, port) pairs besides the source's own host."""
        with self._lock:
            if self._patterns is None:
                self._patterns = parse_hosts(self._defaults())
            return self._patterns

    def allows(self, host: str, port: int | None) -> bool:
        """Whether ``host:port`` matches an allowed pattern."""
        host = host.lower()
        return any(fnmatch.fnmatchcase(host, h) and p in (None, port) for h, p in self.patterns)

    def on_request(self, request: httpx.Request) -> None:
        """httpx request hook: record the first request of a call, check every redirect hop.
        Raises PermissionDenied (reason REDIRECT_NOT_ALLOWED) naming the refused host."""
        url = request.url
        origin = request.extensions.get(_ORIGIN)
        if origin is None:
            request.extensions[_ORIGIN] = (str(url), url.scheme, url.host, _port(url))
            return
        self._check(origin, url, f"{origin[0]} redirected to {url}")

    def check_link(self, source: str, url: str, what: str) -> None:
        """The redirect rule for a URL that ``source`` names rather than redirects to (a JSON
        manifest's per-file ``url``): ``url`` may be fetched only where a redirect from ``source``
        could go. ``what`` begins the error message. Raises PermissionDenied (reason
        REDIRECT_NOT_ALLOWED) naming the refused host."""
        first = httpx.URL(source)
        self._check((source, first.scheme, first.host, _port(first)), httpx.URL(url), what)

    def _check(self, origin: tuple, url: httpx.URL, what: str) -> None:
        _first, scheme, host, port = origin
        where = f"{url.host}:{_port(url)}"
        if scheme == "https" and url.scheme != "https":
            raise PermissionDenied(f"{what}: a redirect from https to plain http is refused",
                                   reason="REDIRECT_NOT_ALLOWED", metadata={"host": where})
        if url.host == host and _port(url) == port:
            return
        if url.host == host and url.scheme != scheme and _port(url) == _DEFAULT_PORTS.get(url.scheme):
            return  # http -> https on the same host
        if self.allows(url.host, _port(url)):
            return
        allowed = ", ".join(h if p is None else f"{h}:{p}" for h, p in self.patterns) or "none"
        raise PermissionDenied(
            f"{what}: {where} is neither the source's host nor in {SETTING} ({allowed}); "
            f"add it to {SETTING} to allow it",
            reason="REDIRECT_NOT_ALLOWED", metadata={"host": where},
        )
