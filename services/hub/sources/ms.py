"""``ms://org/name[@rev][/path]``: a ModelScope repository through the modelscope client
(``modelscope_hub.HubApi``; endpoint ``hub.ms_endpoint`` or ``MODELSCOPE_DOMAIN``); files are
verified by their sha256. Downloads carry the ``hub.ms_token``."""

from __future__ import annotations

import fnmatch
import urllib.parse
from pathlib import PurePosixPath

from swiftmesh.names import sanitize_model_id
from swiftmesh.runtime.errors import FailedPrecondition, NotFound, PermissionDenied, Unavailable

from ..store import ModelFormat
from .base import HEX64, Plan, PlannedFile, SourceContext, parse_repo, repo_default_id, stem

SCHEMES = ("ms",)
# The ``auth`` of this source's origins: downloads get :func:`headers`.
AUTH = "ms"
# The public endpoints' hosts, and where they redirect downloads (their CDN and OSS buckets).
PUBLIC_HOSTS = ("modelscope.cn", "*.modelscope.cn", "modelscope.ai", "*.modelscope.ai")
CDN_HOSTS = ("modelscope.oss-*.aliyuncs.com",)


def endpoint_url(ctx: SourceContext) -> str:
    """The ModelScope endpoint URL (no trailing "/")."""
    if ctx.ms_endpoint:
        ep = ctx.ms_endpoint
    else:
        from modelscope.hub.utils.utils import get_endpoint

        ep = get_endpoint()
    if not ep.startswith(("http://", "https://")):
        ep = "https://" + ep
    return ep.rstrip("/")


def resolve(source: str, ctx: SourceContext, revision: str = "") -> Plan:
    """The plan of a repository (or a path in it) at ``revision`` (or the one after ``@``).
    Raises InvalidArgument, NotFound, PermissionDenied, Unavailable, FailedPrecondition."""
    try:
        from modelscope_hub.api import HubApi
    except ImportError as e:  # pragma: no cover - part of the hub extra
        raise FailedPrecondition(f"ms:// sources need modelscope (pip install 'swiftmesh[hub]'): {e}") from e
    repo_type, repo_id, rev, inner = parse_repo(source, "ms", revision)
    rev = rev or "master"
    endpoint = endpoint_url(ctx)
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
                                      size=f.size, sha256=sha if sha and HEX64.match(sha) else None))
    if not plan.files:
        raise NotFound(f"{source}: no files", field_violations=[("source", "no files")], reason="SOURCE_NOT_FOUND")
    if inner and inner.lower().endswith(".gguf"):
        plan.default_id = f"{repo_id.split('/')[0]}/{sanitize_model_id(stem(inner))}"
    return plan


def redirect_hosts(ctx: SourceContext) -> list[str]:
    """:data:`PUBLIC_HOSTS` and :data:`CDN_HOSTS` when the endpoint is the public ModelScope one,
    else none (also when the modelscope client is not installed)."""
    try:
        host = (urllib.parse.urlsplit(endpoint_url(ctx)).hostname or "").lower()
    except ImportError:
        return []
    if any(fnmatch.fnmatchcase(host, p) for p in PUBLIC_HOSTS):
        return [*PUBLIC_HOSTS, *CDN_HOSTS]
    return []


def headers(ctx: SourceContext) -> dict[str, str]:
    """The auth headers of this source's downloads."""
    return {"Authorization": f"Bearer {ctx.ms_token}"} if ctx.ms_token else {}


def default_id(source: str) -> str:
    """``org/name`` (see :func:`.base.repo_default_id`)."""
    return repo_default_id(source, "ms")
