"""``pkg://<package>/<path>``: a file (or directory) shipped inside an installed Python package,
found on ``sys.path`` without importing the package (importing may run code or fail)."""

from __future__ import annotations

import importlib.machinery
import re
import urllib.parse
from pathlib import Path, PurePosixPath

from swiftmesh.names import sanitize_model_id, validate_file_path
from swiftmesh.runtime.errors import NotFound

from .base import Plan, SourceContext, bad_source, stem
from .local import check_local_root, local_plan

SCHEMES = ("pkg",)


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


def resolve(source: str, ctx: SourceContext, revision: str = "") -> Plan:
    """The plan of ``pkg://<package>/<path>`` (``revision`` is not used). Raises InvalidArgument
    (bad package name, path escaping the package), NotFound (package or path missing)."""
    rest = source[len("pkg://"):]
    package, _, inner = rest.partition("/")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", package or ""):
        raise bad_source(f"pkg:// needs a package name: pkg://<package>/<path> (got {source!r})", "bad package name")
    if not inner:
        raise bad_source(f"pkg:// needs a path inside the package: pkg://{package}/<path>", "missing path")
    inner = validate_file_path(urllib.parse.unquote(inner), "source")
    pkg_dir = find_package_dir(package).resolve()
    path = (pkg_dir / inner).resolve()
    if pkg_dir not in path.parents and path != pkg_dir:
        raise bad_source(f"{inner} escapes package {package}", "path escapes the package")
    check_local_root(path, ctx)
    default = sanitize_model_id(stem(path.name) if path.suffix else path.name)
    return local_plan(source, path, default, "pkg", ctx)


def default_id(source: str) -> str:
    """The file stem (or directory name) of the path inside the package."""
    inner = source[len("pkg://"):].partition("/")[2].rstrip("/")
    name = PurePosixPath(inner).name
    return sanitize_model_id(stem(name) if "." in name else name)
