"""What every source shares: the plan a source resolves into, the context resolvers get from
the hub, the repository grammar of hf:// and ms://, checksum lists, and the policies applied
to every plan (allow/ignore patterns, pickle weights, format detection)."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from swiftmesh.names import sanitize_model_id
from swiftmesh.runtime.errors import InvalidArgument

from ..store import ModelFormat

if TYPE_CHECKING:
    from ..download import Fetcher
    from ..peers import PeerHubs

log = logging.getLogger("swiftmesh.hub.sources")

# Pickle-based weight files: refused unless the pull allows pickle (they can run code when loaded).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# Files of checksum lists a directory source may carry (used, not kept as model files).
CHECKSUM_FILES = ("SHA256SUMS", "sha256sums.txt", "SHA256SUMS.txt")
# The most files a directory source may list.
MAX_LISTED_FILES = 20000
HEX64 = re.compile(r"^[0-9a-f]{64}$")


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
    """What resolvers need from the hub: settings values, the shared HTTP client (``fetcher``)
    and the client of other hubs (``peers``, for hub://)."""

    fetcher: Fetcher
    hf_endpoint: str | None = None
    hf_token: str | None = None
    ms_endpoint: str | None = None
    ms_token: str | None = None
    local_roots: list[Path] | None = None
    peers: PeerHubs | None = None


def bad_source(message: str, why: str | None = None, reason: str = "INVALID_SOURCE") -> InvalidArgument:
    """The InvalidArgument of a source that is not understood (field ``source``, ``why`` as the
    violation's description, default the message)."""
    return InvalidArgument(message, field_violations=[("source", why or message)], reason=reason)


def split_rev(text: str) -> tuple[str, str]:
    """'org/name@rev/sub/path' -> ('org/name/sub/path' without rev, rev)."""
    if "@" not in text:
        return text, ""
    head, tail = text.split("@", 1)
    rev, _, rest = tail.partition("/")
    return (f"{head}/{rest}" if rest else head), urllib.parse.unquote(rev)


def stem(path: str) -> str:
    """File name without its last extension ("x.Q4_1.gguf" -> "x.Q4_1")."""
    return PurePosixPath(path).stem or PurePosixPath(path).name


def parse_repo(source: str, scheme: str, revision: str) -> tuple[str, str, str, str]:
    """'hf://[datasets/]org/name[@rev][/path]' -> (repo_type, repo_id, revision, path-in-repo)."""
    rest = source[len(scheme) + 3:].strip("/")
    repo_type = "model"
    if rest.startswith(("datasets/", "models/")):
        repo_type = "dataset" if rest.startswith("datasets/") else "model"
        rest = rest.split("/", 1)[1]
    rest, rev = split_rev(rest)
    parts = rest.split("/")
    if len(parts) < 2 or not all(parts[:2]):
        raise bad_source(f"{source}: expected {scheme}://org/name[@revision][/path]", "expected org/name")
    repo_id = "/".join(parts[:2])
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*", repo_id) or ".." in repo_id:
        raise bad_source(f"{source}: {repo_id!r} is not a valid repository id", "invalid repository id")
    inner = "/".join(parts[2:])
    if revision and rev and revision != rev:
        raise InvalidArgument(
            f"revision {revision!r} conflicts with @{rev} in the source",
            field_violations=[("revision", f"conflicts with @{rev} in source")],
        )
    return repo_type, repo_id, revision or rev, inner


def repo_default_id(source: str, scheme: str) -> str:
    """The model id of an hf:// or ms:// source: ``org/name`` for a model repository, the name for
    a dataset, ``org/<file stem>`` for one file inside a repository. Raises InvalidArgument."""
    repo_type, repo_id, _rev, inner = parse_repo(source, scheme, "")
    if inner:
        return f"{repo_id.split('/')[0]}/{sanitize_model_id(stem(inner.rstrip('/')))}"
    return repo_id if repo_type == "model" else sanitize_model_id(repo_id.split("/")[1])


def parse_checksums(text: str) -> dict[str, str]:
    """A ``sha256sum`` listing (``<hex>  <path>`` per line) as {path: sha256}; other lines are skipped."""
    out = {}
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2 and HEX64.match(parts[0].lower()):
            out[parts[1].lstrip("*").lstrip("./")] = parts[0].lower()
    return out


def use_checksum_file(plan: Plan, read: Callable[[str], str | None]) -> None:
    """When the plan lists a checksum file (:data:`CHECKSUM_FILES`), drop it from the files and give
    its hashes to the files that have none; ``read(name)`` returns its text."""
    names = {f.path for f in plan.files}
    for name in CHECKSUM_FILES:
        if name in names:
            text = read(name)
            sums = parse_checksums(text or "")
            plan.files = [f for f in plan.files if f.path != name]
            for f in plan.files:
                if f.path in sums and not f.sha256:
                    f.sha256 = sums[f.path]
            return


def apply_patterns(plan: Plan, allow: list[str], ignore: list[str]) -> None:
    """Keep the files matching an ``allow`` pattern (all when empty) and no ``ignore`` pattern
    (fnmatch; ``*`` crosses "/"; a trailing "/" matches a directory). Raises InvalidArgument
    (reason NO_FILES_SELECTED) when nothing is left."""
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
    """True for pickle-based weight files (:data:`PICKLE_SUFFIXES`)."""
    return path.lower().endswith(PICKLE_SUFFIXES)


def apply_pickle_policy(plan: Plan, allow_pickle: bool) -> None:
    """Unless ``allow_pickle``: drop pickle files when safetensors/GGUF weights are present, else
    raise InvalidArgument (field ``allow_pickle``, reason PICKLE_REFUSED)."""
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


def detect_format(plan: Plan, requested: ModelFormat) -> None:
    """Set ``plan.format`` (and ``plan.gguf``): GGUF-derived for one .gguf without config.json,
    else what was requested, what the source said, PEFT adapter or full model. Raises
    InvalidArgument (GGUF_AMBIGUOUS, FORMAT_UNKNOWN)."""
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
