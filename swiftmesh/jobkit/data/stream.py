"""One dataset source as a stream of checked rows, and ``#N`` over that stream: the path every
method's loader (:mod:`.sft`, :mod:`.alignment`) and ``swiftmesh data preview`` share.

:func:`open_source` resolves a source string (``path#N``, ``models/{name}``) to a path;
:func:`iter_source` yields its rows one by one (``(file, row number, object)``, streamed by
:mod:`.reading`); :func:`collect` converts every row with the caller's converter and keeps all
of them, or ``N`` of them drawn by :func:`~.reading.reservoir` while streaming, so a ``#N`` of a
multi-GB file holds only ``N`` converted rows in memory. Every row is read and converted (and so
checked) even when only ``N`` are kept: nothing wrong in a dataset goes unseen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from swiftmesh.jobkit.data.reading import (
    SourceError,
    Violation,
    iter_rows,
    locate,
    parse_source,
    raise_violations,
    reservoir,
)
from swiftmesh.runtime.errors import InvalidArgument

T = TypeVar("T")


def open_source(spec: str, idx: int, *, models=None, field: str = "spec.datasets") -> tuple[str, int | None, Path]:
    """``(path string, N or None, local path)`` of a source such as ``"data.jsonl#100"``.

    ``idx`` is the source's index in the request field ``field`` (for field violations);
    ``models`` the hub's model source for ``models/{name}`` datasets.

    Raises:
        InvalidArgument: a bad ``#N``, a hub dataset without a hub or a hub model that is not a
            dataset (reason ``BAD_DATASET_SPEC``), a missing path (``DATASET_NOT_FOUND``).
        NotFound: a ``models/`` dataset the hub lacks.
    """
    where = f"{field}[{idx}]"
    try:
        path_str, count = parse_source(spec)
    except ValueError as e:
        raise InvalidArgument(f"dataset {spec!r}: {e}", reason="BAD_DATASET_SPEC",
                              field_violations=[(where, str(e))]) from None
    try:
        return path_str, count, locate(path_str, models)
    except SourceError as e:
        if e.reason == "no_hub":
            raise InvalidArgument(f"dataset {path_str}: {e.problem}", reason="BAD_DATASET_SPEC",
                                  field_violations=[(where, "no hub")]) from None
        if e.reason == "not_dataset":
            raise InvalidArgument(f"{path_str} {e.problem}", reason="BAD_DATASET_SPEC",
                                  field_violations=[(where, "not a dataset")]) from None
        raise InvalidArgument(f"dataset {path_str!r}: {e.problem}", reason="DATASET_NOT_FOUND",
                              field_violations=[(where, f"{path_str}: {e.problem}")]) from None


def iter_source(path: Path, path_str: str, idx: int, *, file_reason: str = "BAD_DATASET_FILE",
                field: str = "spec.datasets") -> Iterator[tuple[str, int, dict]]:
    """The rows of an opened source, streamed, as ``(file, 1-based row, object)``.

    Raises (while iterating):
        InvalidArgument: a line or file that does not parse (reason ``file_reason``, naming file
            and row), a row that is not a JSON object (``BAD_DATASET_ROW``), no rows at all
            (``EMPTY_DATASET``).
    """
    errors: list[Violation] = []
    seen = 0
    for file, n, value in iter_rows(path, path_str, idx, errors):
        raise_violations(errors, reason=file_reason)
        if not isinstance(value, dict):
            raise InvalidArgument(
                f"dataset {file!r}, row {n}: a row must be a JSON object, got a {type(value).__name__}",
                reason="BAD_DATASET_ROW", field_violations=[(f"{field}[{idx}]", f"{file} row {n}: not an object")],
                metadata={"file": file, "row": str(n), "field": ""})
        seen += 1
        yield file, n, value
    raise_violations(errors, reason=file_reason)
    if not seen:
        raise InvalidArgument(f"dataset {path_str!r} holds no rows", reason="EMPTY_DATASET",
                              field_violations=[(f"{field}[{idx}]", f"{path_str}: no rows")])


def collect(spec: str, idx: int, convert: Callable[[str, int, dict], T | None], *, models=None, seed: int = 42,
            field: str = "spec.datasets", file_reason: str = "BAD_DATASET_FILE") -> list[T]:
    """Every converted row of a source, or ``#N`` of them drawn by :func:`~.reading.reservoir`
    with ``seed`` (the same rows for every method).

    ``convert(file, row number, row)`` returns the converted item, or None to leave the row
    out (a converter collecting its own violations); it may raise to stop.

    Raises:
        InvalidArgument: as :func:`open_source` and :func:`iter_source`, and whatever ``convert`` raises.
        NotFound: a ``models/`` dataset the hub lacks.
    """
    path_str, count, path = open_source(spec, idx, models=models, field=field)
    rows = iter_source(path, path_str, idx, file_reason=file_reason, field=field)
    items = (item for file, n, row in rows if (item := convert(file, n, row)) is not None)
    return list(items) if count is None else reservoir(items, count, seed)
