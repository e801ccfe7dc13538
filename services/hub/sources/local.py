"""Local sources: ``/abs/path``, ``./rel``, ``~/x`` and ``file:///abs/path``: a directory (every
non-hidden file, symlinks followed; a ``SHA256SUMS`` file in it gives hashes) or one file. With
``hub.local_source_roots`` set, only paths under those roots are accepted."""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

from swiftmesh.names import sanitize_model_id
from swiftmesh.runtime.errors import NotFound, PermissionDenied

from .base import MAX_LISTED_FILES, Plan, PlannedFile, SourceContext, bad_source, stem, use_checksum_file

SCHEMES = ("file", "")


def check_local_root(path: Path, ctx: SourceContext) -> None:
    """Raise PermissionDenied (reason LOCAL_SOURCE_NOT_ALLOWED) when ``ctx.local_roots`` is not
    None and ``path`` (symlinks and ``..`` resolved) is under none of them. An empty list (a remote
    caller while ``hub.local_source_roots`` is unset) allows no local path."""
    if ctx.local_roots is None:
        return
    real = path.resolve()
    for root in ctx.local_roots:
        if real == Path(root).resolve() or Path(root).resolve() in real.parents:
            return
    allowed = ", ".join(str(r) for r in ctx.local_roots) or "none configured: remote callers may not read local paths"
    raise PermissionDenied(
        f"{path} is outside hub.local_source_roots ({allowed})",
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
                raise bad_source(f"{root} holds more than {MAX_LISTED_FILES} files")
    return out


def _planned(rel: str, p: Path, ctx: SourceContext | None) -> PlannedFile:
    """The file ``p`` as ``rel`` of the model, its origin the resolved path (symlinks and ``..``
    resolved once, here, and checked against the roots: the copy opens that path, so a symlink
    changed after the check is not followed)."""
    real = p.resolve()
    if ctx is not None:
        check_local_root(real, ctx)
    return PlannedFile(rel, {"kind": "local", "path": str(real)}, real.stat().st_size)


def local_plan(source: str, path: Path, default_id: str, kind: str, ctx: SourceContext | None = None) -> Plan:
    """The plan of a local directory or file (``ctx``: check every file's resolved path against
    the local roots). Origins hold resolved paths. Raises NotFound (no such path), InvalidArgument
    (empty or too large a directory), PermissionDenied (a file outside the roots)."""
    plan = Plan(source=source, kind=kind, default_id=default_id)
    if path.is_dir():
        for rel, p in _walk_local(path):
            plan.files.append(_planned(rel, p, ctx))  # a symlink inside may point elsewhere
        if not plan.files:
            raise bad_source(f"{path} holds no files", "empty directory")
        use_checksum_file(plan, lambda name: (path / name).read_text() if (path / name).is_file() else None)
    elif path.is_file():
        plan.files.append(_planned(path.name, path, ctx))
    else:
        raise NotFound(f"{path} does not exist", field_violations=[("source", "no such file or directory")],
                       reason="SOURCE_NOT_FOUND")
    return plan


def local_path(source: str) -> Path:
    """The absolute path a local source names (``~`` expanded, relative to the working directory).
    Raises InvalidArgument for a file:// URL with a remote host."""
    if source.startswith("file://"):
        parsed = urllib.parse.urlparse(source)
        if parsed.netloc not in ("", "localhost"):
            raise bad_source(f"file:// URL with a remote host {parsed.netloc!r}")
        path = Path(urllib.parse.unquote(parsed.path))
    else:
        path = Path(os.path.expanduser(source))
    return path if path.is_absolute() else Path.cwd() / path


def resolve(source: str, ctx: SourceContext, revision: str = "") -> Plan:
    """The plan of a local path (``revision`` is not used). Raises PermissionDenied, NotFound."""
    path = local_path(source)
    check_local_root(path, ctx)
    default = sanitize_model_id(stem(path.name) if path.is_file() else path.name)
    return local_plan(source, path, default, "local", ctx)


def default_id(source: str) -> str:
    """The file stem of a file, the name of a directory."""
    path = local_path(source)
    return sanitize_model_id(stem(path.name) if path.is_file() else path.name)
