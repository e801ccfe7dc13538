"""Source URIs of PullModel, resolved into a plan: the files to fetch, with sizes and hashes.

Accepted sources (``PullModelRequest.source``):

``/abs/path``, ``./rel``, ``~/x``, ``file:///abs/path``
    a local directory (every non-hidden file) or one file. With ``hub.local_source_roots`` set,
    only paths under those roots are accepted.
``http(s)://host/dir/``
    a directory listing (nginx/Apache HTML autoindex or nginx JSON autoindex), walked
    recursively; a ``SHA256SUMS`` / ``sha256sums.txt`` file in the top directory gives hashes.
``http(s)://host/x/manifest.json``
    a JSON manifest ``{"files": [{"path", "size"?, "sha256"?, "url"?}], "revision"?}``; paths are
    relative to the manifest's URL unless a ``url`` is given.
``http(s)://host/x/file``
    a single file. Hashes come from ``Repr-Digest``/``Digest`` (sha-256), ``X-Checksum-Sha256``
    or a 64-hex ``X-Linked-Etag``/``ETag`` header when present.
``hf://org/name[@rev][/path/in/repo]``, ``hf://datasets/org/name[@rev]``
    a Hugging Face repository through ``huggingface_hub`` (``HfApi.model_info`` with file
    metadata; the endpoint is ``hub.hf_endpoint`` or ``HF_ENDPOINT``). LFS files are verified by
    sha256, other files by their git blob sha1. Revisions resolve to a commit.
``ms://org/name[@rev][/path]``
    a ModelScope repository through the modelscope client (``modelscope_hub.HubApi``; endpoint
    ``hub.ms_endpoint`` or ``MODELSCOPE_DOMAIN``); files are verified by their sha256.
``pkg://<package>/<path>``
    a file (or directory) shipped inside an installed Python package, found on ``sys.path``
    without importing the package (importing may run code or fail).
``hub://host:port/<model id>``
    a model on another hub, mirrored through ``ReadModelFile`` (resumable, sha256-verified).

A single ``.gguf`` file (or a repository whose selected files are one ``.gguf`` and no
``config.json``) is converted into a full model (MODEL_FORMAT_GGUF_DERIVED).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import html.parser
import importlib.machinery
import json
import logging
import os
import re
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import httpx

from swiftmesh.runtime.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)

from .download import Fetcher, http_status_error
from swiftmesh.names import sanitize_model_id, validate_file_path, validate_model_id
from .store import ModelFormat

log = logging.getLogger("swiftmesh.hub.sources")

# Pickle-based weight files: refused unless the pull allows pickle (they can run code when loaded).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# Files of checksum lists a directory source may carry (used, not kept as model files).
CHECKSUM_FILES = ("SHA256SUMS", "sha256sums.txt", "SHA256SUMS.txt")
MAX_LISTED_FILES = 20000
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class PlannedFile:
    """A file to bring into the model: ``path`` in the model, ``origin`` (how to fetch it;
    stored for repair), ``size``/``sha256``/``git_sha1`` when the source says so."""

    path: str
    origin: dict
    size: int | None = None
    sha256: str | None = None
    git_sha1: str | None = None

    @property
    def key(self) -> str:
        """Identity of this transfer (names the partial file and the fetch record)."""
        if self.sha256:
            return f"sha256-{self.sha256}"
        ident = {k: v for k, v in self.origin.items() if k not in ("auth",)}
        ident["size"] = self.size
        ident["git_sha1"] = self.git_sha1
        return "src-" + hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:40]


@dataclass
class Plan:
    """What a pull brings in."""

    source: str
    kind: str
    default_id: str
    revision: str = ""
    files: list[PlannedFile] = field(default_factory=list)
    format: ModelFormat = ModelFormat.UNSPECIFIED
    # The one .gguf file to convert (its plan entry), when the model is GGUF-derived.
    gguf: PlannedFile | None = None
    skipped_pickle: list[str] = field(default_factory=list)


@dataclass
class SourceContext:
    """What resolvers need from the hub: settings values and the shared HTTP client."""

    fetcher: Fetcher
    hf_endpoint: str | None = None
    hf_token: str | None = None
    ms_endpoint: str | None = None
    ms_token: str | None = None
    local_roots: list[Path] | None = None
    hub_settings: object | None = None


def _bad_source(message: str, why: str | None = None, reason: str = "INVALID_SOURCE") -> InvalidArgument:
    return InvalidArgument(message, field_violations=[("source", why or message)], reason=reason)


# =============================================================================================
# Entry point
# =============================================================================================
def resolve(
    source: str,
    ctx: SourceContext,
    *,
    revision: str = "",
    allow_patterns: list[str] | None = None,
    ignore_patterns: list[str] | None = None,
    allow_pickle: bool = False,
    requested_format: ModelFormat = ModelFormat.UNSPECIFIED,
) -> Plan:
    """Resolve ``source`` into a :class:`Plan` (network calls for remote sources).

    Applies allow/ignore patterns (fnmatch, ``*`` crosses "/"), the pickle policy (pickle files
    are dropped when safetensors weights are present, and refused otherwise unless
    ``allow_pickle``), and detects the format. Raises InvalidArgument (field ``source``,
    ``format`` or ``allow_pickle``), NotFound (no such repository/file), PermissionDenied,
    Unavailable (source unreachable), FailedPrecondition (offline mode).
    """
    source = (source or "").strip()
    if not source:
        raise _bad_source("source is empty", "required")
    if "\x00" in source:
        raise _bad_source("source contains a NUL byte")
    scheme = source.split("://", 1)[0].lower() if "://" in source else ""
    if scheme in ("http", "https"):
        plan = _resolve_http(source, ctx)
    elif scheme == "hf":
        plan = _resolve_hf(source, ctx, revision)
    elif scheme == "ms":
        plan = _resolve_ms(source, ctx, revision)
    elif scheme == "pkg":
        plan = _resolve_pkg(source, ctx)
    elif scheme == "hub":
        plan = _resolve_hub(source, ctx)
    elif scheme in ("file", ""):
        plan = _resolve_local(source, ctx)
    else:
        raise _bad_source(
            f"unsupported source scheme {scheme!r}: use a path, file://, http(s)://, hf://, ms://, pkg:// or hub://",
            f"unsupported scheme {scheme!r}",
        )
    for f in plan.files:
        validate_file_path(f.path, "source")
    _apply_patterns(plan, allow_patterns or [], ignore_patterns or [])
    _apply_pickle_policy(plan, allow_pickle)
    _detect_format(plan, requested_format)
    return plan


def _apply_patterns(plan: Plan, allow: list[str], ignore: list[str]) -> None:
    if not allow and not ignore:
        return

    def norm(p: str) -> str:
        return p + "*" if p.endswith("/") else p

    allow_n = [norm(p) for p in allow]
    ignore_n = [norm(p) for p in ignore]
    kept = []
    for f in plan.files:
        if allow_n and not any(fnmatch.fnmatchcase(f.path, p) for p in allow_n):
            continue
        if any(fnmatch.fnmatchcase(f.path, p) for p in ignore_n):
            continue
        kept.append(f)
    if not kept:
        raise InvalidArgument(
            f"no file of {plan.source} matches allow_patterns={allow} ignore_patterns={ignore}",
            field_violations=[("allow_patterns", "matches no file")],
            reason="NO_FILES_SELECTED",
        )
    plan.files = kept


def is_pickle(path: str) -> bool:
    return path.lower().endswith(PICKLE_SUFFIXES)


def _apply_pickle_policy(plan: Plan, allow_pickle: bool) -> None:
    if allow_pickle:
        return
    pickles = [f.path for f in plan.files if is_pickle(f.path)]
    if not pickles:
        return
    others = [f for f in plan.files if not is_pickle(f.path)]
    has_safe_weights = any(f.path.endswith((".safetensors", ".gguf")) for f in others)
    if has_safe_weights:
        plan.files = others
        plan.skipped_pickle = pickles
        log.info("%s: skipping pickle files %s (safetensors present; allow_pickle to keep them)", plan.source, pickles)
        return
    raise InvalidArgument(
        f"{plan.source} has pickle-based weights {pickles[:5]} (loading them can run arbitrary code) and no "
        "safetensors; set allow_pickle to accept them",
        field_violations=[("allow_pickle", f"pickle files {pickles[:5]} need allow_pickle=true")],
        reason="PICKLE_REFUSED",
    )


def _detect_format(plan: Plan, requested: ModelFormat) -> None:
    paths = {f.path for f in plan.files}
    ggufs = [f for f in plan.files if f.path.lower().endswith(".gguf")]
    wants_gguf = requested == ModelFormat.GGUF_DERIVED or (
        requested == ModelFormat.UNSPECIFIED and ggufs and "config.json" not in paths
        and "adapter_config.json" not in paths
    )
    if wants_gguf:
        if len(ggufs) != 1:
            names = [f.path for f in ggufs]
            raise InvalidArgument(
                f"{plan.source}: {'no' if not ggufs else len(ggufs)} .gguf files {names[:8]}; choose exactly one "
                "with allow_patterns",
                field_violations=[("allow_patterns", f"select one of {names[:8]}" if ggufs else "no .gguf file")],
                reason="GGUF_AMBIGUOUS",
            )
        plan.gguf = ggufs[0]
        plan.format = ModelFormat.GGUF_DERIVED
        return
    if requested != ModelFormat.UNSPECIFIED:
        plan.format = requested
        return
    if plan.format != ModelFormat.UNSPECIFIED:  # told by the source (another hub, a dataset repo)
        return
    if "adapter_config.json" in paths:
        plan.format = ModelFormat.PEFT_ADAPTER
    elif "config.json" in paths:
        plan.format = ModelFormat.FULL
    else:
        raise InvalidArgument(
            f"cannot tell what {plan.source} is: no config.json (full model), adapter_config.json (PEFT adapter) "
            "or single .gguf file; set format (e.g. MODEL_FORMAT_DATASET)",
            field_violations=[("format", "not detectable from the files; set it")],
            reason="FORMAT_UNKNOWN",
        )


def _split_rev(text: str) -> tuple[str, str]:
    """'org/name@rev/sub/path' -> ('org/name/sub/path' without rev, rev)."""
    if "@" not in text:
        return text, ""
    head, tail = text.split("@", 1)
    rev, _, rest = tail.partition("/")
    return (f"{head}/{rest}" if rest else head), urllib.parse.unquote(rev)


def _stem(path: str) -> str:
    """File name without its last extension ("x.Q4_1.gguf" -> "x.Q4_1")."""
    return PurePosixPath(path).stem or PurePosixPath(path).name


# =============================================================================================
# Local paths, pkg://
# =============================================================================================
def _check_local_root(path: Path, ctx: SourceContext) -> None:
    if ctx.local_roots is None:
        return
    real = path.resolve()
    for root in ctx.local_roots:
        if real == Path(root).resolve() or Path(root).resolve() in real.parents:
            return
    raise PermissionDenied(
        f"{path} is outside hub.local_source_roots ({', '.join(str(r) for r in ctx.local_roots)})",
        reason="LOCAL_SOURCE_NOT_ALLOWED",
        field_violations=[("source", "outside the allowed local roots")],
    )


def _walk_local(root: Path) -> list[tuple[str, Path]]:
    """Non-hidden files under ``root`` (symlinks followed, each directory visited once)."""
    out = []
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:  # a symlink loop
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = Path(dirpath) / name
            if p.is_file():
                out.append((p.relative_to(root).as_posix(), p))
            if len(out) > MAX_LISTED_FILES:
                raise _bad_source(f"{root} holds more than {MAX_LISTED_FILES} files")
    return out


def _local_plan(source: str, path: Path, default_id: str, kind: str, ctx: SourceContext | None = None) -> Plan:
    plan = Plan(source=source, kind=kind, default_id=default_id)
    if path.is_dir():
        for rel, p in _walk_local(path):
            if ctx is not None:
                _check_local_root(p, ctx)  # a symlink inside may point elsewhere
            plan.files.append(PlannedFile(rel, {"kind": "local", "path": str(p.absolute())}, p.stat().st_size))
        if not plan.files:
            raise _bad_source(f"{path} holds no files", "empty directory")
        _use_checksum_file(plan, lambda name: (path / name).read_text() if (path / name).is_file() else None)
    elif path.is_file():
        plan.files.append(PlannedFile(path.name, {"kind": "local", "path": str(path.absolute())}, path.stat().st_size))
    else:
        raise NotFound(f"{path} does not exist", field_violations=[("source", "no such file or directory")],
                       reason="SOURCE_NOT_FOUND")
    return plan


def _local_path(source: str) -> Path:
    if source.startswith("file://"):
        parsed = urllib.parse.urlparse(source)
        if parsed.netloc not in ("", "localhost"):
            raise _bad_source(f"file:// URL with a remote host {parsed.netloc!r}")
        path = Path(urllib.parse.unquote(parsed.path))
    else:
        path = Path(os.path.expanduser(source))
    return path if path.is_absolute() else Path.cwd() / path


def default_model_id(source: str) -> str:
    """The model id a pull of ``source`` registers under when no model_id is given, derived from
    the URI alone (no network): ``org/name`` for hf://, ms:// and hub:// repositories, the file stem
    (``SmolLM2-135M-Instruct.Q4_1`` for ``.../SmolLM2-135M-Instruct.Q4_1.gguf``) or directory name
    otherwise. Raises InvalidArgument for sources that are not understood."""
    source = (source or "").strip()
    if not source:
        raise _bad_source("source is empty", "required")
    scheme = source.split("://", 1)[0].lower() if "://" in source else ""
    if scheme in ("hf", "ms"):
        repo_type, repo_id, _rev, inner = _hub_repo(source, scheme, "")
        if inner:
            return f"{repo_id.split('/')[0]}/{sanitize_model_id(_stem(inner.rstrip('/')))}"
        return repo_id if repo_type == "model" else sanitize_model_id(repo_id.split("/")[1])
    if scheme == "hub":
        model = source[len("hub://"):].partition("/")[2]
        return model.removeprefix("models/")
    if scheme in ("http", "https"):
        path = urllib.parse.unquote(urllib.parse.urlparse(source).path)
        pp = PurePosixPath(path)
        if source.endswith("/"):
            return sanitize_model_id(pp.name or urllib.parse.urlparse(source).netloc)
        if pp.name.lower() in ("manifest.json", "swiftmesh-manifest.json", "model_index.json"):
            return sanitize_model_id(pp.parent.name or "model")
        return sanitize_model_id(_stem(pp.name))
    if scheme == "pkg":
        inner = source[len("pkg://"):].partition("/")[2].rstrip("/")
        name = PurePosixPath(inner).name
        return sanitize_model_id(_stem(name) if "." in name else name)
    if scheme in ("file", ""):
        path = _local_path(source)
        return sanitize_model_id(_stem(path.name) if path.is_file() else path.name)
    raise _bad_source(f"unsupported source scheme {scheme!r}", f"unsupported scheme {scheme!r}")


def _resolve_local(source: str, ctx: SourceContext) -> Plan:
    path = _local_path(source)
    _check_local_root(path, ctx)
    default = sanitize_model_id(_stem(path.name) if path.is_file() else path.name)
    return _local_plan(source, path, default, "local", ctx)


def find_package_dir(package: str) -> Path:
    """The directory of an installed package, found on sys.path without importing it (nor its
    parents). Raises NotFound naming the package."""
    parts = package.split(".")
    search: list[str] | None = None
    spec = None
    for i, part in enumerate(parts):
        spec = importlib.machinery.PathFinder.find_spec(part, search)
        if spec is None or not spec.submodule_search_locations:
            raise NotFound(
                f"package {'.'.join(parts[: i + 1])!r} is not installed (not found on sys.path without importing it)",
                field_violations=[("source", f"no package {package!r}")],
                reason="PACKAGE_NOT_FOUND",
            )
        search = list(spec.submodule_search_locations)
    assert spec is not None and search
    return Path(search[0])


def _resolve_pkg(source: str, ctx: SourceContext) -> Plan:
    rest = source[len("pkg://"):]
    package, _, inner = rest.partition("/")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", package or ""):
        raise _bad_source(f"pkg:// needs a package name: pkg://<package>/<path> (got {source!r})", "bad package name")
    if not inner:
        raise _bad_source(f"pkg:// needs a path inside the package: pkg://{package}/<path>", "missing path")
    inner = validate_file_path(urllib.parse.unquote(inner), "source")
    pkg_dir = find_package_dir(package).resolve()
    path = (pkg_dir / inner).resolve()
    if pkg_dir not in path.parents and path != pkg_dir:
        raise _bad_source(f"{inner} escapes package {package}", "path escapes the package")
    default = sanitize_model_id(_stem(path.name) if path.suffix else path.name)
    return _local_plan(source, path, default, "pkg")


# =============================================================================================
# http(s)
# =============================================================================================
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
                    if _HEX64.match(val.lower()):
                        return val.lower()
    for name in ("x-checksum-sha256", "x-linked-etag", "etag"):
        value = (headers.get(name) or "").strip().strip('"').lower()
        if value.startswith("w/"):
            continue
        if _HEX64.match(value):
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
    from .download import RetryableError

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
    if depth > 16:
        raise _bad_source(f"{url}: directory listing nested deeper than 16 levels")
    r = _get(ctx, url)
    ctype = r.headers.get("content-type", "")
    entries: list[tuple[str, bool, int | None]] = []
    if "json" in ctype:
        try:
            items = r.json()
        except ValueError as e:
            raise _bad_source(f"{url}: listing is not valid JSON: {e}") from None
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
            raise _bad_source(f"{url}: more than {MAX_LISTED_FILES} files")


def _parse_checksums(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2 and _HEX64.match(parts[0].lower()):
            out[parts[1].lstrip("*").lstrip("./")] = parts[0].lower()
    return out


def _use_checksum_file(plan: Plan, read: Callable[[str], str | None]) -> None:
    names = {f.path for f in plan.files}
    for name in CHECKSUM_FILES:
        if name in names:
            text = read(name)
            sums = _parse_checksums(text or "")
            plan.files = [f for f in plan.files if f.path != name]
            for f in plan.files:
                if f.path in sums and not f.sha256:
                    f.sha256 = sums[f.path]
            return


def _resolve_http(source: str, ctx: SourceContext) -> Plan:
    parsed = urllib.parse.urlparse(source)
    if not parsed.netloc:
        raise _bad_source(f"{source}: URL without a host")
    path = urllib.parse.unquote(parsed.path)
    if source.endswith("/"):
        listed: list[tuple[str, str, int | None]] = []
        _list_http_dir(ctx, source, "", 0, listed)
        if not listed:
            raise _bad_source(f"{source}: the directory listing holds no files", "empty listing")
        plan = Plan(source=source, kind="http", default_id=sanitize_model_id(PurePosixPath(path).name or parsed.netloc))
        sums_text: dict[str, str] = {}
        for rel, url, _size in listed:
            if rel in CHECKSUM_FILES:
                sums_text[rel] = _get(ctx, url).text
        with ThreadPoolExecutor(8) as pool:
            files = list(pool.map(lambda item: _http_file(ctx, item[1], item[0]), listed))
        plan.files = files
        _use_checksum_file(plan, lambda name: sums_text.get(name))
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
        raise _bad_source(f"{source}: URL names no file (end a directory URL with '/')")
    plan = Plan(source=source, kind="http", default_id=sanitize_model_id(_stem(name)))
    plan.files = [_http_file(ctx, source, name)]
    return plan


def _manifest_plan(source: str, doc: dict, ctx: SourceContext) -> Plan:
    parent = PurePosixPath(urllib.parse.urlparse(source).path).parent.name
    plan = Plan(source=source, kind="http", default_id=sanitize_model_id(doc.get("name") or parent or "model"),
                revision=str(doc.get("revision", "")))
    items = []
    for i, entry in enumerate(doc["files"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise _bad_source(f"{source}: files[{i}] needs a 'path'", f"manifest files[{i}]: missing path")
        rel = validate_file_path(entry["path"], "source")
        url = entry.get("url") or urllib.parse.urljoin(source, urllib.parse.quote(rel))
        sha = entry.get("sha256")
        if sha is not None and not (isinstance(sha, str) and _HEX64.match(sha.lower())):
            raise _bad_source(f"{source}: files[{i}].sha256 is not 64 hex digits", f"manifest files[{i}].sha256")
        items.append((rel, url, {"sha256": sha.lower() if sha else None, "size": entry.get("size")}))
    with ThreadPoolExecutor(8) as pool:
        plan.files = list(pool.map(lambda it: _http_file(ctx, it[1], it[0], it[2]), items))
    return plan


# =============================================================================================
# hf://
# =============================================================================================
def _hub_repo(source: str, scheme: str, revision: str) -> tuple[str, str, str, str]:
    """'hf://[datasets/]org/name[@rev][/path]' -> (repo_type, repo_id, revision, path-in-repo)."""
    rest = source[len(scheme) + 3:].strip("/")
    repo_type = "model"
    if rest.startswith(("datasets/", "models/")):
        repo_type = "dataset" if rest.startswith("datasets/") else "model"
        rest = rest.split("/", 1)[1]
    rest, rev = _split_rev(rest)
    parts = rest.split("/")
    if len(parts) < 2 or not all(parts[:2]):
        raise _bad_source(f"{source}: expected {scheme}://org/name[@revision][/path]", "expected org/name")
    repo_id = "/".join(parts[:2])
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*", repo_id) or ".." in repo_id:
        raise _bad_source(f"{source}: {repo_id!r} is not a valid repository id", "invalid repository id")
    inner = "/".join(parts[2:])
    if revision and rev and revision != rev:
        raise InvalidArgument(
            f"revision {revision!r} conflicts with @{rev} in the source",
            field_violations=[("revision", f"conflicts with @{rev} in source")],
        )
    return repo_type, repo_id, revision or rev, inner


def hf_endpoint(ctx: SourceContext) -> str:
    from huggingface_hub import constants

    return (ctx.hf_endpoint or constants.ENDPOINT).rstrip("/")


def _resolve_hf(source: str, ctx: SourceContext, revision: str) -> Plan:
    try:
        from huggingface_hub import HfApi, hf_hub_url
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            OfflineModeIsEnabled,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError as e:  # pragma: no cover - part of the hub extra
        raise FailedPrecondition(f"hf:// sources need huggingface_hub (pip install 'swiftmesh[hub]'): {e}") from e
    repo_type, repo_id, rev, inner = _hub_repo(source, "hf", revision)
    endpoint = hf_endpoint(ctx)
    api = HfApi(endpoint=endpoint, token=ctx.hf_token, library_name="swiftmesh")
    try:
        if repo_type == "dataset":
            info = api.dataset_info(repo_id, revision=rev or None, files_metadata=True)
        else:
            info = api.model_info(repo_id, revision=rev or None, files_metadata=True)
    except OfflineModeIsEnabled as e:
        raise FailedPrecondition(f"{source}: HF_HUB_OFFLINE is set, the hub will not reach {endpoint}",
                                 reason="HF_OFFLINE") from e
    except RevisionNotFoundError as e:
        raise NotFound(f"{source}: revision {rev!r} not found", field_violations=[("revision", "not found")],
                       reason="REVISION_NOT_FOUND") from e
    except (RepositoryNotFoundError, GatedRepoError) as e:
        raise NotFound(f"{source}: repository {repo_id} not found or not accessible at {endpoint} "
                       f"({type(e).__name__})", field_violations=[("source", "repository not found")],
                       reason="SOURCE_NOT_FOUND") from e
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", 0) or 0
        if status == 404:
            raise NotFound(f"{source}: repository {repo_id} not found at {endpoint}",
                           field_violations=[("source", "repository not found")], reason="SOURCE_NOT_FOUND") from e
        if status in (401, 403):
            raise PermissionDenied(f"{source}: {endpoint} denied access (HTTP {status}); set hub.hf_token",
                                   reason="SOURCE_DENIED") from e
        raise Unavailable(f"{source}: {endpoint} answered HTTP {status}: {e}", reason="SOURCE_UNAVAILABLE") from e
    except httpx.HTTPError as e:
        raise Unavailable(f"{source}: {endpoint} unreachable: {e}", reason="SOURCE_UNAVAILABLE") from e
    except Exception as e:  # httpx2 / requests errors from huggingface_hub
        if "connect" in type(e).__name__.lower() or "timeout" in type(e).__name__.lower():
            raise Unavailable(f"{source}: {endpoint} unreachable: {type(e).__name__}: {e}",
                              reason="SOURCE_UNAVAILABLE") from e
        raise
    commit = info.sha or rev or "main"
    default = repo_id if repo_type == "model" else repo_id.split("/")[1]
    plan = Plan(source=source, kind="hf", default_id=default, revision=commit)
    if repo_type == "dataset":
        plan.format = ModelFormat.DATASET
    for s in info.siblings or []:
        if inner and s.rfilename != inner and not s.rfilename.startswith(inner.rstrip("/") + "/"):
            continue
        url = hf_hub_url(repo_id, s.rfilename, repo_type=repo_type, revision=commit, endpoint=endpoint)
        lfs = s.lfs
        path = s.rfilename
        if inner and inner != s.rfilename:
            path = s.rfilename[len(inner.rstrip("/")) + 1:]
        elif inner:
            path = PurePosixPath(s.rfilename).name
        plan.files.append(
            PlannedFile(
                path=path,
                origin={"kind": "http", "url": url, "auth": "hf"},
                size=(lfs.size if lfs else s.size),
                sha256=(lfs.sha256 if lfs else None),
                git_sha1=(None if lfs else s.blob_id),
            )
        )
    if not plan.files:
        raise NotFound(f"{source}: no file {inner!r} in {repo_id}@{commit}" if inner else f"{source}: empty repository",
                       field_violations=[("source", "no files")], reason="SOURCE_NOT_FOUND")
    if inner and inner.lower().endswith(".gguf"):
        plan.default_id = f"{repo_id.split('/')[0]}/{sanitize_model_id(_stem(inner))}"
    return plan


def hf_headers(ctx: SourceContext) -> dict[str, str]:
    from huggingface_hub.utils import build_hf_headers

    headers = build_hf_headers(token=ctx.hf_token, library_name="swiftmesh")
    headers.pop("user-agent", None)
    headers.pop("User-Agent", None)
    return headers


# =============================================================================================
# ms://
# =============================================================================================
def ms_endpoint(ctx: SourceContext) -> str:
    if ctx.ms_endpoint:
        ep = ctx.ms_endpoint
    else:
        from modelscope.hub.utils.utils import get_endpoint

        ep = get_endpoint()
    if not ep.startswith(("http://", "https://")):
        ep = "https://" + ep
    return ep.rstrip("/")


def _resolve_ms(source: str, ctx: SourceContext, revision: str) -> Plan:
    try:
        from modelscope_hub.api import HubApi
    except ImportError as e:  # pragma: no cover - part of the hub extra
        raise FailedPrecondition(f"ms:// sources need modelscope (pip install 'swiftmesh[hub]'): {e}") from e
    repo_type, repo_id, rev, inner = _hub_repo(source, "ms", revision)
    rev = rev or "master"
    endpoint = ms_endpoint(ctx)
    api = HubApi(endpoint=endpoint, token=ctx.ms_token)
    try:
        files = api.list_repo_files(repo_id, repo_type, revision=rev, recursive=True)
    except Exception as e:  # modelscope_hub raises its own hierarchy
        name = type(e).__name__
        if "NotFound" in name or "NotExist" in name:
            raise NotFound(f"{source}: {repo_id}@{rev} not found at {endpoint}: {e}",
                           field_violations=[("source", "repository not found")], reason="SOURCE_NOT_FOUND") from e
        if "Permission" in name or "Auth" in name:
            raise PermissionDenied(f"{source}: access denied by {endpoint}: {e}", reason="SOURCE_DENIED") from e
        raise Unavailable(f"{source}: {endpoint}: {name}: {e}", reason="SOURCE_UNAVAILABLE") from e
    default = repo_id if repo_type == "model" else repo_id.split("/")[1]
    plan = Plan(source=source, kind="ms", default_id=default, revision=rev)
    if repo_type == "dataset":
        plan.format = ModelFormat.DATASET
    for f in files:
        if f.is_dir:
            continue
        if inner and f.path != inner and not f.path.startswith(inner.rstrip("/") + "/"):
            continue
        path = f.path
        if inner and inner != f.path:
            path = f.path[len(inner.rstrip("/")) + 1:]
        elif inner:
            path = PurePosixPath(f.path).name
        url = api.legacy.get_download_url(repo_id, repo_type, f.path, rev)
        sha = (f.sha256 or "").lower() or None
        plan.files.append(PlannedFile(path=path, origin={"kind": "http", "url": url, "auth": "ms"},
                                      size=f.size, sha256=sha if sha and _HEX64.match(sha) else None))
    if not plan.files:
        raise NotFound(f"{source}: no files", field_violations=[("source", "no files")], reason="SOURCE_NOT_FOUND")
    if inner and inner.lower().endswith(".gguf"):
        plan.default_id = f"{repo_id.split('/')[0]}/{sanitize_model_id(_stem(inner))}"
    return plan


def ms_headers(ctx: SourceContext) -> dict[str, str]:
    return {"Authorization": f"Bearer {ctx.ms_token}"} if ctx.ms_token else {}


# =============================================================================================
# hub://
# =============================================================================================
def _resolve_hub(source: str, ctx: SourceContext) -> Plan:
    import grpc

    from swiftmesh.hub.v1 import hub_pb2
    from swiftmesh.runtime.client import domain_error

    from .download import sync_hub_stub

    rest = source[len("hub://"):]
    target, _, model = rest.partition("/")
    if not target or not model:
        raise _bad_source(f"{source}: expected hub://host:port/<model id>", "expected hub://host:port/model")
    model = model.removeprefix("models/")
    validate_model_id(model, "source")
    if ctx.hub_settings is None:
        raise FailedPrecondition("hub:// sources need settings")
    try:
        with sync_hub_stub(ctx.hub_settings, target) as (stub, metadata):
            m = stub.GetModel(hub_pb2.GetModelRequest(name=f"models/{model}"), metadata=metadata,
                              timeout=ctx.hub_settings.rpc_timeout_s)
    except grpc.RpcError as e:
        err = domain_error(e)
        if isinstance(err, Unavailable) or err.code_name == "DEADLINE_EXCEEDED":
            raise Unavailable(f"{source}: hub at {target} unreachable: {err.message}",
                              reason="SOURCE_UNAVAILABLE") from None
        raise err from None
    plan = Plan(source=source, kind="hub", default_id=model, revision=m.revision)
    plan.format = ModelFormat(m.format) if m.format else ModelFormat.UNSPECIFIED
    for f in m.files:
        plan.files.append(PlannedFile(
            path=f.path,
            origin={"kind": "hub", "target": target, "model": m.name, "path": f.path, "sha256": f.sha256},
            size=f.size_bytes, sha256=f.sha256,
        ))
    return plan
