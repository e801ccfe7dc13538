"""``hf://org/name[@rev][/path/in/repo]``, ``hf://datasets/org/name[@rev]``: a Hugging Face
repository through ``huggingface_hub`` (``HfApi.model_info`` with file metadata; the endpoint is
``hub.hf_endpoint`` or ``HF_ENDPOINT``). LFS files are verified by sha256, other files by their
git blob sha1. Revisions resolve to a commit. Downloads carry the ``hub.hf_token``."""

from __future__ import annotations

import fnmatch
import urllib.parse
from pathlib import PurePosixPath

import httpx

from swiftmesh.names import sanitize_model_id
from swiftmesh.runtime.errors import FailedPrecondition, NotFound, PermissionDenied, Unavailable

from ..store import ModelFormat
from .base import Plan, PlannedFile, SourceContext, parse_repo, repo_default_id, stem

SCHEMES = ("hf",)
# The ``auth`` of this source's origins: downloads get :func:`headers`.
AUTH = "hf"
# Where the public endpoint redirects downloads: its LFS and Xet CDNs (cdn-lfs*.hf.co,
# cas-bridge.xethub.hf.co, cdn-lfs.huggingface.co, ...).
PUBLIC_HOSTS = ("huggingface.co", "*.huggingface.co", "hf.co", "*.hf.co")


def endpoint_url(ctx: SourceContext) -> str:
    """The Hugging Face endpoint URL (no trailing "/")."""
    from huggingface_hub import constants

    return (ctx.hf_endpoint or constants.ENDPOINT).rstrip("/")


def resolve(source: str, ctx: SourceContext, revision: str = "") -> Plan:
    """The plan of a repository (or a path in it) at ``revision`` (or the one after ``@``).
    Raises InvalidArgument, NotFound, PermissionDenied, Unavailable, FailedPrecondition."""
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
    repo_type, repo_id, rev, inner = parse_repo(source, "hf", revision)
    endpoint = endpoint_url(ctx)
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
        plan.default_id = f"{repo_id.split('/')[0]}/{sanitize_model_id(stem(inner))}"
    return plan


def redirect_hosts(ctx: SourceContext) -> list[str]:
    """:data:`PUBLIC_HOSTS` when the endpoint is the public Hugging Face one, else none (a mirror's
    downloads stay on its own host unless ``hub.redirect_allow_hosts`` says otherwise)."""
    host = (urllib.parse.urlsplit(endpoint_url(ctx)).hostname or "").lower()
    return list(PUBLIC_HOSTS) if any(fnmatch.fnmatchcase(host, p) for p in PUBLIC_HOSTS) else []


def headers(ctx: SourceContext) -> dict[str, str]:
    """The auth headers of this source's downloads."""
    from huggingface_hub.utils import build_hf_headers

    headers = build_hf_headers(token=ctx.hf_token, library_name="swiftmesh")
    headers.pop("user-agent", None)
    headers.pop("User-Agent", None)
    return headers


def default_id(source: str) -> str:
    """``org/name`` (see :func:`.base.repo_default_id`)."""
    return repo_default_id(source, "hf")
