"""Source URIs of PullModel, resolved into a plan: the files to fetch, with sizes and hashes.

One module per kind of source, each with ``SCHEMES`` (the URI schemes it answers; "" is a plain
path), ``resolve(source, ctx, revision) -> Plan`` and ``default_id(source) -> str``; a source
whose downloads need credentials also has ``AUTH`` (the ``auth`` of its origins) and
``headers(ctx)``. A new kind of source is one module added to :data:`SOURCES`.

========================  =====================================================================
:mod:`.local`             ``/abs/path``, ``./rel``, ``~/x``, ``file:///abs/path``
:mod:`.pkg`               ``pkg://<package>/<path>`` (a file shipped in an installed package)
:mod:`.http`              ``http(s)://`` directory listings, JSON manifests, single files
:mod:`.hf`                ``hf://org/name[@rev][/path]`` (Hugging Face)
:mod:`.ms`                ``ms://org/name[@rev][/path]`` (ModelScope)
:mod:`.mirror`            ``hub://host:port/<model id>`` (another hub)
========================  =====================================================================

What every plan then goes through (:mod:`.base`): allow/ignore patterns, the pickle policy and
format detection: a single ``.gguf`` file (or a repository whose selected files are one ``.gguf``
and no ``config.json``) is converted into a full model (MODEL_FORMAT_GGUF_DERIVED).
"""

from __future__ import annotations

from types import ModuleType

from swiftmesh.names import validate_file_list

from ..store import ModelFormat
from . import hf, http, local, mirror, ms, pkg
from .base import (
    Plan,
    SourceContext,
    apply_patterns,
    apply_pickle_policy,
    bad_source,
    detect_format,
)

# Every kind of source, in the order the error for an unknown scheme lists them.
SOURCES: tuple[ModuleType, ...] = (local, http, hf, ms, pkg, mirror)
_BY_SCHEME: dict[str, ModuleType] = {scheme: m for m in SOURCES for scheme in m.SCHEMES}
_BY_AUTH: dict[str, ModuleType] = {m.AUTH: m for m in SOURCES if hasattr(m, "AUTH")}


def source_module(source: str) -> ModuleType:
    """The module that handles ``source`` (by its scheme). Raises InvalidArgument (empty source,
    a NUL byte, an unsupported scheme)."""
    source = (source or "").strip()
    if not source:
        raise bad_source("source is empty", "required")
    if "\x00" in source:
        raise bad_source("source contains a NUL byte")
    scheme = source.split("://", 1)[0].lower() if "://" in source else ""
    module = _BY_SCHEME.get(scheme)
    if module is None:
        raise bad_source(
            f"unsupported source scheme {scheme!r}: use a path, file://, http(s)://, hf://, ms://, pkg:// or hub://",
            f"unsupported scheme {scheme!r}",
        )
    return module


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
    """Resolve ``source`` into a :class:`~.base.Plan` (network calls for remote sources).

    Applies allow/ignore patterns (fnmatch, ``*`` crosses "/"), the pickle policy (pickle files
    are dropped when safetensors weights are present, and refused otherwise unless
    ``allow_pickle``), and detects the format. Raises InvalidArgument (field ``source``,
    ``format`` or ``allow_pickle``), NotFound (no such repository/file), PermissionDenied,
    Unavailable (source unreachable), FailedPrecondition (offline mode).
    """
    source = (source or "").strip()
    plan = source_module(source).resolve(source, ctx, revision)
    validate_file_list([(f.path, f.size) for f in plan.files], "source")
    apply_patterns(plan, allow_patterns or [], ignore_patterns or [])
    apply_pickle_policy(plan, allow_pickle)
    detect_format(plan, requested_format)
    return plan


def default_model_id(source: str) -> str:
    """The model id a pull of ``source`` registers under when no model_id is given, derived from
    the URI alone (no network): ``org/name`` for hf://, ms:// and hub:// repositories, the file stem
    (``SmolLM2-135M-Instruct.Q4_1`` for ``.../SmolLM2-135M-Instruct.Q4_1.gguf``) or directory name
    otherwise. Raises InvalidArgument for sources that are not understood."""
    source = (source or "").strip()
    return source_module(source).default_id(source)


def default_redirect_hosts(ctx: SourceContext) -> list[str]:
    """The hosts downloads may be redirected to when ``hub.redirect_allow_hosts`` is unset: each
    source's ``redirect_hosts(ctx)`` (the CDNs of the public Hugging Face and ModelScope
    endpoints, when those are the endpoints configured)."""
    return [h for m in SOURCES if hasattr(m, "redirect_hosts") for h in m.redirect_hosts(ctx)]


def auth_headers(origin: dict, ctx: SourceContext) -> dict[str, str]:
    """The credentials a download of ``origin`` needs (by its ``auth``: hf, ms), else {}."""
    module = _BY_AUTH.get(origin.get("auth", ""))
    return module.headers(ctx) if module is not None else {}
