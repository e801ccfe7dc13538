"""http(s) sources.

``http(s)://host/dir/``
    a directory listing (nginx/Apache HTML autoindex or nginx JSON autoindex), walked
    recursively; a ``SHA256SUMS`` / ``sha256sums.txt`` file in the top directory gives hashes.
``http(s)://host/x/manifest.json``
    a JSON manifest ``{"files": [{"path", "size"?, "sha256"?, "url"?}], "revision"?}``; paths are
    relative to the manifest's URL unless a ``url`` is given (http(s) only, relative to the manifest,
    and only to the hosts a redirect from the manifest may reach: ``hub.redirect_allow_hosts``).
``http(s)://host/x/file``
    a single file. Hashes come from ``Repr-Digest``/``Digest`` (sha-256), ``X-Checksum-Sha256``
    or a 64-hex ``X-Linked-Etag``/``ETag`` header when present.

Requests go through the hub's shared HTTP client and retry policy (``ctx.fetcher``).
"""

from __future__ import annotations

import base64
import html.parser
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

import httpx

from swiftmesh.names import sanitize_model_id, validate_file_list
from swiftmesh.runtime.errors import Unavailable

from ..download import RetryableError, http_status_error
from .base import (
    CHECKSUM_FILES,
    HEX64,
    MAX_LISTED_FILES,
    Plan,
    PlannedFile,
    SourceContext,
    bad_source,
    stem,
    use_checksum_file,
)

if TYPE_CHECKING:
    from ..redirects import RedirectPolicy

SCHEMES = ("http", "https")
# Directory listings nested deeper than this are refused.
MAX_LISTING_DEPTH = 16


class _LinkParser(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            for k, v in attrs:
                if k == "href" and v:
                    self.links.append(v)


def _digest_from_headers(headers: httpx.Headers) -> str | None:
    for name in ("repr-digest", "digest", "content-digest"):
        value = headers.get(name)
        if not value:
            continue
        for item in value.split(","):
            algo, _, val = item.strip().partition("=")
            if algo.lower() in ("sha-256", "sha256"):
                val = val.strip().strip(":")
                try:
                    return base64.b64decode(val).hex()
                except ValueError:
                    if HEX64.match(val.lower()):
                        return val.lower()
    for name in ("x-checksum-sha256", "x-linked-etag", "etag"):
        value = (headers.get(name) or "").strip().strip('"').lower()
        if value.startswith("w/"):
            continue
        if HEX64.match(value):
            return value
    return None


def _head(ctx: SourceContext, url: str, headers: dict | None = None) -> tuple[httpx.Response, dict]:
    """HEAD a file: (response, origin fields: size, etag, last_modified, sha256). Retries."""
    def go() -> httpx.Response:
        r = ctx.fetcher.http.head(url, headers=headers or {})
        if r.status_code == 405:  # no HEAD: a one-byte GET
            r = ctx.fetcher.http.get(url, headers={**(headers or {}), "Range": "bytes=0-0"})
        if r.status_code >= 400:
            raise http_status_error(r.status_code, url)
        return r

    r = _with_retries(ctx, go, url)
    size = None
    cr = r.headers.get("content-range")
    if r.status_code == 206 and cr and "/" in cr and cr.rsplit("/", 1)[1].isdigit():
        size = int(cr.rsplit("/", 1)[1])
    elif r.headers.get("x-linked-size", "").isdigit():
        size = int(r.headers["x-linked-size"])
    elif r.headers.get("content-length", "").isdigit():
        size = int(r.headers["content-length"])
    info = {
        "size": size,
        "etag": r.headers.get("x-linked-etag") or r.headers.get("etag"),
        "last_modified": r.headers.get("last-modified"),
        "sha256": _digest_from_headers(r.headers),
    }
    return r, info


def _with_retries(ctx: SourceContext, fn: Callable[[], httpx.Response], what: str) -> httpx.Response:
    try:
        for attempt in ctx.fetcher.retrying():
            with attempt:
                return fn()
    except RetryableError as e:
        raise Unavailable(f"{what}: {e}", reason="SOURCE_UNAVAILABLE") from e
    except httpx.TransportError as e:
        raise Unavailable(f"{what}: {type(e).__name__}: {e}", reason="SOURCE_UNAVAILABLE") from e
    raise AssertionError("unreachable")


def _get(ctx: SourceContext, url: str, headers: dict | None = None) -> httpx.Response:
    def go() -> httpx.Response:
        r = ctx.fetcher.http.get(url, headers=headers or {})
        if r.status_code >= 400:
            raise http_status_error(r.status_code, url)
        return r

    return _with_retries(ctx, go, url)


def _http_file(ctx: SourceContext, url: str, path: str, known: dict | None = None) -> PlannedFile:
    known = known or {}
    _, info = _head(ctx, url)
    origin = {"kind": "http", "url": url}
    for k in ("etag", "last_modified"):
        if info.get(k):
            origin[k] = info[k]
    sha = known.get("sha256") or info.get("sha256")
    size = known.get("size") if known.get("size") is not None else info.get("size")
    return PlannedFile(path=path, origin=origin, size=size, sha256=sha)


def _list_http_dir(ctx: SourceContext, url: str, prefix: str, depth: int, out: list[tuple[str, str, int | None]]) -> None:
    if depth > MAX_LISTING_DEPTH:
        raise bad_source(f"{url}: directory listing nested deeper than {MAX_LISTING_DEPTH} levels")
    r = _get(ctx, url)
    ctype = r.headers.get("content-type", "")
    entries: list[tuple[str, bool, int | None]] = []
    if "json" in ctype:
        try:
            items = r.json()
        except ValueError as e:
            raise bad_source(f"{url}: listing is not valid JSON: {e}") from None
        for item in items if isinstance(items, list) else []:
            name = str(item.get("name", ""))
            entries.append((name, item.get("type") == "directory", item.get("size")))
    else:
        parser = _LinkParser()
        parser.feed(r.text)
        base = urllib.parse.urlparse(url)
        for href in parser.links:
            target = urllib.parse.urlparse(urllib.parse.urljoin(url, href))
            if target.netloc != base.netloc or not target.path.startswith(base.path) or target.query:
                continue
            rel = urllib.parse.unquote(target.path[len(base.path):])
            if not rel or rel.startswith("?"):
                continue
            is_dir = rel.endswith("/")
            name = rel.rstrip("/")
            if "/" in name:
                continue
            entries.append((name, is_dir, None))
    for name, is_dir, size in entries:
        if not name or name in (".", "..") or name.startswith("."):
            continue
        child = urllib.parse.urljoin(url, urllib.parse.quote(name) + ("/" if is_dir else ""))
        if is_dir:
            _list_http_dir(ctx, child, f"{prefix}{name}/", depth + 1, out)
        else:
            out.append((f"{prefix}{name}", child, size))
        if len(out) > MAX_LISTED_FILES:
            raise bad_source(f"{url}: more than {MAX_LISTED_FILES} files")


def resolve(source: str, ctx: SourceContext, revision: str = "") -> Plan:
    """The plan of a directory listing, a manifest or a single file (``revision`` is not used;
    a manifest may carry one). Raises InvalidArgument, NotFound, PermissionDenied, Unavailable."""
    parsed = urllib.parse.urlparse(source)
    if not parsed.netloc:
        raise bad_source(f"{source}: URL without a host")
    path = urllib.parse.unquote(parsed.path)
    if source.endswith("/"):
        listed: list[tuple[str, str, int | None]] = []
        _list_http_dir(ctx, source, "", 0, listed)
        if not listed:
            raise bad_source(f"{source}: the directory listing holds no files", "empty listing")
        plan = Plan(source=source, kind="http", default_id=sanitize_model_id(PurePosixPath(path).name or parsed.netloc))
        sums_text: dict[str, str] = {}
        for rel, url, _size in listed:
            if rel in CHECKSUM_FILES:
                sums_text[rel] = _get(ctx, url).text
        with ThreadPoolExecutor(8) as pool:
            files = list(pool.map(lambda item: _http_file(ctx, item[1], item[0]), listed))
        plan.files = files
        use_checksum_file(plan, lambda name: sums_text.get(name))
        return plan
    if path.endswith(".json"):
        r = _get(ctx, source)
        try:
            doc = r.json()
        except ValueError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("files"), list):
            return _manifest_plan(source, doc, ctx)
    name = PurePosixPath(path).name
    if not name:
        raise bad_source(f"{source}: URL names no file (end a directory URL with '/')")
    plan = Plan(source=source, kind="http", default_id=sanitize_model_id(stem(name)))
    plan.files = [_http_file(ctx, source, name)]
    return plan


def _manifest_plan(source: str, doc: dict, ctx: SourceContext) -> Plan:
    """The plan of a JSON manifest. Every entry is checked before any file is fetched: the paths and
    sizes as a whole (:func:`swiftmesh.names.validate_file_list`), a ``url`` (relative to the
    manifest) only http(s) and only to hosts a redirect from the manifest may reach
    (:meth:`..redirects.RedirectPolicy.check_link`). Raises InvalidArgument, PermissionDenied."""
    parent = PurePosixPath(urllib.parse.urlparse(source).path).parent.name
    plan = Plan(source=source, kind="http", default_id=sanitize_model_id(doc.get("name") or parent or "model"),
                revision=str(doc.get("revision", "")))
    entries = doc["files"]
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise bad_source(f"{source}: files[{i}] needs a 'path'", f"manifest files[{i}]: missing path")
    paths = validate_file_list([(e["path"], e.get("size")) for e in entries], "source")
    policy = getattr(ctx.fetcher, "redirects", None)
    items = []
    for i, (entry, rel) in enumerate(zip(entries, paths, strict=True)):
        url = urllib.parse.urljoin(source, urllib.parse.quote(rel))
        if entry.get("url") not in (None, ""):  # absent or empty: next to the manifest
            url = _manifest_url(source, i, rel, entry["url"], policy)
        sha = entry.get("sha256")
        if sha is not None and not (isinstance(sha, str) and HEX64.match(sha.lower())):
            raise bad_source(f"{source}: files[{i}].sha256 is not 64 hex digits", f"manifest files[{i}].sha256")
        items.append((rel, url, {"sha256": sha.lower() if sha else None, "size": entry.get("size")}))
    with ThreadPoolExecutor(8) as pool:
        plan.files = list(pool.map(lambda it: _http_file(ctx, it[1], it[0], it[2]), items))
    return plan


def _manifest_url(source: str, i: int, rel: str, raw: object, policy: RedirectPolicy | None) -> str:
    """files[i].url of a manifest, made absolute and checked (InvalidArgument, PermissionDenied)."""
    what = f"{source}: files[{i}] ({rel}) url {raw!r}"
    if not isinstance(raw, str):
        raise bad_source(f"{what} is not a URL", f"manifest files[{i}].url: not a URL")
    url = urllib.parse.urljoin(source, raw)
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme.lower() not in SCHEMES or not parsed.hostname:
        raise bad_source(f"{what}: only http(s) URLs with a host are allowed for a manifest's files",
                         f"manifest files[{i}].url: not an http(s) URL")
    if policy is not None:
        try:
            policy.check_link(source, url, what)
        except httpx.InvalidURL as e:
            raise bad_source(f"{what}: {e}", f"manifest files[{i}].url: invalid URL") from None
    return url


def default_id(source: str) -> str:
    """The directory name of a listing, the parent directory of a manifest, else the file stem."""
    path = urllib.parse.unquote(urllib.parse.urlparse(source).path)
    pp = PurePosixPath(path)
    if source.endswith("/"):
        return sanitize_model_id(pp.name or urllib.parse.urlparse(source).netloc)
    if pp.name.lower() in ("manifest.json", "swiftmesh-manifest.json", "model_index.json"):
        return sanitize_model_id(pp.parent.name or "model")
    return sanitize_model_id(stem(pp.name))
