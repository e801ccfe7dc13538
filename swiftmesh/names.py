"""The one model-name grammar of SwiftMesh (hub, jobs, gateway, CLI, clients), and file paths
inside a model: validation that keeps everything inside the cache.

A model id is ``name`` or ``org/name``; each segment matches ``[A-Za-z0-9][A-Za-z0-9._-]{0,127}``
and may not contain ``..`` (the resource-name rule of ``hub.proto``, tightened). Resource names
are ``models/{id}``. File paths inside a model are relative POSIX paths without ``..``, empty,
hidden-lock or absolute components. Every violation raises :class:`InvalidArgument` naming the
request field.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from swiftmesh.runtime.errors import InvalidArgument

_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_BAD_PATH_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")
MAX_PATH_BYTES = 1024


def validate_model_id(value: str, field: str = "model_id") -> str:
    """Check a model id ("name" or "org/name"; a leading "models/" is accepted and dropped).

    Returns the bare id. Raises InvalidArgument with a field violation on ``field`` (reason
    INVALID_MODEL_NAME) for empty ids, ``..``, absolute paths, more than one "/", or characters
    outside ``[A-Za-z0-9._-]``.
    """
    raw = value
    value = value.removeprefix("models/")

    def bad(why: str) -> InvalidArgument:
        return InvalidArgument(
            f"invalid model name {raw!r}: {why}",
            field_violations=[(field, why)],
            reason="INVALID_MODEL_NAME",
        )

    if not value:
        raise bad("must not be empty")
    if value.startswith("/"):
        raise bad("must not be an absolute path")
    if ".." in value:
        raise bad("must not contain '..'")
    parts = value.split("/")
    if len(parts) > 2:
        raise bad("at most one '/' (as in 'org/name')")
    for part in parts:
        if not _SEGMENT.fullmatch(part):
            raise bad(
                "each part must start with a letter or digit and use only letters, digits, '.', '_', '-' "
                "(at most 128 characters)"
            )
    return value


def resource_name(model_id: str) -> str:
    """``org/name`` -> ``models/org/name``."""
    return f"models/{model_id}"


def model_resource_name(name: str, field: str = "name") -> str:
    """``"x"``, ``"org/x"`` or ``"models/org/x"`` -> ``"models/org/x"``, the prefix only.

    For callers (clients, CLI) that leave the grammar to the hub, which answers with the field
    that is wrong. Raises InvalidArgument on ``field`` for an empty name."""
    name = (name or "").strip()
    if not name:
        raise InvalidArgument("model name is empty", field_violations=[(field, "required: models/{model}")],
                              reason="INVALID_MODEL_NAME")
    return name if name.startswith("models/") else resource_name(name)


def model_id(name: str, field: str = "name") -> str:
    """``"models/org/x"`` or ``"org/x"`` -> ``"org/x"``, the prefix only (see :func:`model_resource_name`)."""
    return model_resource_name(name, field).removeprefix("models/")


def parse_resource_name(name: str, field: str = "name") -> str:
    """``models/{id}`` (or a bare id) -> the validated id; InvalidArgument on ``field`` otherwise."""
    if not name:
        raise InvalidArgument("model name is empty", field_violations=[(field, "required: models/{model}")],
                              reason="INVALID_MODEL_NAME")
    return validate_model_id(name, field)


def validate_file_path(path: str, field: str) -> str:
    """A file path inside a model: relative, POSIX, no ``..``/``.``/empty parts, no control characters
    or backslashes, at most 1024 bytes. Returns it normalised (no leading "./"). Raises InvalidArgument."""

    def bad(why: str) -> InvalidArgument:
        return InvalidArgument(f"invalid file path {path!r}: {why}", field_violations=[(field, why)],
                               reason="INVALID_FILE_PATH")

    if not path:
        raise bad("must not be empty")
    if len(path.encode()) > MAX_PATH_BYTES:
        raise bad(f"longer than {MAX_PATH_BYTES} bytes")
    if _BAD_PATH_CHARS.search(path):
        raise bad("control characters and backslashes are not allowed")
    if path.startswith("/"):
        raise bad("must be relative")
    parts = [p for p in path.split("/") if p not in ("", ".")] if path.startswith("./") else path.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise bad("empty, '.' and '..' components are not allowed")
    return "/".join(parts)


def validate_file_list(files: Sequence[tuple[str, object]], field: str, size_field: str = "size") -> list[str]:
    """The files of one model as a whole (an upload header, a manifest, a listing): each path as
    :func:`validate_file_path`, no path listed twice, no path that is also a directory of another
    (``a`` and ``a/b``), each size None (unknown) or an int >= 0.

    ``files`` is (path, size) pairs. ``field`` names the list: with ``{i}`` in it
    (``"header.files[{i}]"``) a violation names the entry (``header.files[3].path``,
    ``header.files[3].<size_field>``), else it is on ``field`` itself (``"source"``). Returns the
    normalised paths in order. Raises InvalidArgument (reason INVALID_FILE_PATH naming the
    conflicting paths, INVALID_FILE_SIZE naming the file and its size)."""

    def at(i: int, what: str) -> str:
        return f"{field.format(i=i)}.{what}" if "{i}" in field else field

    paths = [validate_file_path(path, at(i, "path")) for i, (path, _size) in enumerate(files)]
    first: dict[str, int] = {}
    for i, (path, (_raw, size)) in enumerate(zip(paths, files, strict=True)):
        if size is not None and (type(size) is not int or size < 0):
            raise InvalidArgument(f"file {path!r}: size {size!r} is not a byte count >= 0",
                                  field_violations=[(at(i, size_field), "must be an integer >= 0")],
                                  reason="INVALID_FILE_SIZE")
        if path in first:
            raise InvalidArgument(f"file {path!r} is listed twice", field_violations=[(at(i, "path"), "duplicate")],
                                  reason="INVALID_FILE_PATH")
        first[path] = i
    for i, path in enumerate(paths):
        parts = path.split("/")
        for n in range(1, len(parts)):
            parent = "/".join(parts[:n])
            if parent in first:
                raise InvalidArgument(
                    f"files {parent!r} and {path!r} conflict: {parent!r} cannot be a file and a directory",
                    field_violations=[(at(i, "path"), f"inside {parent!r}, which is listed as a file")],
                    reason="INVALID_FILE_PATH")
    return paths


def sanitize_model_id(text: str) -> str:
    """Derive a valid single-segment id from free text (a file or directory name): invalid
    characters become '-', leading non-alphanumerics are dropped, at most 128 characters."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text)
    s = s.replace("..", ".")
    s = re.sub(r"^[^A-Za-z0-9]+", "", s)[:128].rstrip(".-_")
    return s or "model"


def dir_parts(model_id: str) -> tuple[str, str]:
    """The two directory levels of a model in the cache: ``("org", "name")`` or ``("_", "name")``.

    "_" can never be an org (segments start with a letter or digit), so the two kinds never collide.
    """
    if "/" in model_id:
        org, name = model_id.split("/", 1)
        return org, name
    return "_", model_id
