"""Reading dataset sources into raw rows: file formats, local and hub paths, ``#N`` counts.

A *source* is one string, as ms-swift's ``--dataset`` takes it
(https://swift.readthedocs.io/en/latest/Customization/Custom-dataset.html): a local file
(``.jsonl``, ``.json``, ``.csv``, ``.parquet``), a Hugging Face ``datasets`` directory written
by ``save_to_disk``, a directory of such files (read recursively, hidden paths skipped), or
``models/{name}`` of a dataset registered in the hub. A ``#N`` suffix asks for N rows.

What a row *means* (SFT conversations, preference pairs, ...) is for the modules that convert
them (:mod:`.sft`, :mod:`.alignment`); this module only yields ``(file, row number, value)``
and collects what it could not read as :class:`Violation` entries.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swiftmesh.runtime.errors import InvalidArgument

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
# Violations listed in one INVALID_ARGUMENT at most.
MAX_VIOLATIONS = 20


@dataclass
class Violation:
    """One problem of a dataset source: where it is and what is wrong.

    ``source_index`` is the position of the source in ``spec.datasets``; ``row`` is 1-based
    (0: the file as a whole); ``field`` is the row's field ("" for the row or file).
    """

    source_index: int
    file: str
    row: int
    field: str
    problem: str

    def as_field(self) -> tuple[str, str]:
        """``("spec.datasets[i]", "<file> row <n>: field '<f>' <problem>")``, a field violation."""
        where = f"{self.file} row {self.row}" if self.row else self.file
        fld = f" field '{self.field}'" if self.field else ""
        return (f"spec.datasets[{self.source_index}]", f"{where}:{fld} {self.problem}")


def raise_violations(violations: list[Violation], reason: str = "BAD_DATASET_ROW") -> None:
    """Raise the violations as one :class:`InvalidArgument`; return when there are none.

    The message names the first problem (file, row, field) and counts the rest; the field
    violations list at most :data:`MAX_VIOLATIONS` of them; ``metadata`` holds the first's
    ``file``, ``row`` and ``field``.
    """
    if not violations:
        return
    first = violations[0]
    more = f" (and {len(violations) - 1} more problems)" if len(violations) > 1 else ""
    raise InvalidArgument(
        f"dataset {first.file}" + (f", row {first.row}" if first.row else "")
        + (f", field '{first.field}'" if first.field else "") + f": {first.problem}{more}",
        field_violations=[v.as_field() for v in violations[:MAX_VIOLATIONS]],
        reason=reason,
        metadata={"file": first.file, "row": str(first.row), "field": first.field},
    )


def parse_source(source: str) -> tuple[str, int | None]:
    """Split ms-swift's ``#N`` row count off a source: ``"data.jsonl#100"`` -> ``("data.jsonl", 100)``.

    Returns ``(source, None)`` without a ``#``.

    Raises:
        ValueError: ``N`` is not an integer, or not > 0 (the message says which).
    """
    if "#" in source:
        path, _, n = source.rpartition("#")
        try:
            count = int(n)
        except ValueError:
            raise ValueError(f"'#{n}' is not a row count") from None
        if count <= 0:
            raise ValueError(f"'#{n}': the row count must be > 0")
        return path, count
    return source, None


class SourceError(Exception):
    """A source path that cannot be opened; ``reason`` is ``no_hub``, ``not_dataset`` or
    ``not_found`` and ``problem`` the text for the user (without the path)."""

    def __init__(self, reason: str, problem: str) -> None:
        super().__init__(problem)
        self.reason = reason
        self.problem = problem


def locate(path_str: str, models=None) -> Path:
    """The local path of a source (without its ``#N``): ``models/{name}`` is materialized from
    ``models`` (a :class:`~swiftmesh.jobkit.models.ModelSource`), anything else is a local path
    (``~`` expanded).

    Raises:
        SourceError: no ``models`` for a hub dataset (``no_hub``), a hub model that is not a
            dataset (``not_dataset``), a local path that does not exist (``not_found``).
        NotFound: the hub has no such model (from ``models.get``).
    """
    if path_str.startswith("models/"):
        if models is None:
            raise SourceError("no_hub", "hub datasets need the hub")
        info = models.get(path_str)  # NotFound propagates
        if info.format != "dataset":
            raise SourceError("not_dataset", f"is a {info.format} model in the hub, not a dataset")
        return Path(models.materialize(path_str))
    path = Path(path_str).expanduser()
    if not path.exists():
        raise SourceError("not_found", "no such file or directory")
    return path


def _read_jsonl(path: Path, display: str, idx: int, errors: list[Violation]) -> Iterator[tuple[int, Any]]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                errors.append(Violation(idx, display, n, "", f"invalid JSON ({e.msg} at column {e.colno})"))


def _read_json(path: Path, display: str, idx: int, errors: list[Violation]) -> Iterator[tuple[int, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        errors.append(Violation(idx, display, 0, "", f"invalid JSON ({e.msg} at line {e.lineno} column {e.colno})"))
        return
    if isinstance(data, dict):
        for key in ("data", "train", "rows"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
    if not isinstance(data, list):
        errors.append(Violation(idx, display, 0, "", "a .json dataset must hold a list of rows"))
        return
    yield from enumerate(data, 1)


def _read_csv(path: Path, display: str, idx: int, errors: list[Violation]) -> Iterator[tuple[int, Any]]:
    with open(path, encoding="utf-8", newline="") as f:
        for n, row in enumerate(csv.DictReader(f), 1):
            out = {}
            for k, v in row.items():
                if k is None:
                    errors.append(Violation(idx, display, n, "", "more values than columns"))
                    continue
                if isinstance(v, str) and v[:1] in "[{" and k in ("messages", "conversations", "history", "tools"):
                    try:
                        v = json.loads(v)
                    except json.JSONDecodeError as e:
                        errors.append(Violation(idx, display, n, k, f"invalid JSON in the cell ({e.msg})"))
                        continue
                out[k] = v
            yield n, out


def _read_parquet(path: Path, display: str, idx: int, errors: list[Violation]) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # noqa: BLE001
        errors.append(Violation(idx, display, 0, "", f"cannot read parquet: {e}"))
        return
    yield from enumerate(table.to_pylist(), 1)


def _is_hf_saved(d: Path) -> bool:
    return (d / "dataset_info.json").is_file() or (d / "state.json").is_file() or (d / "dataset_dict.json").is_file()


def _read_hf_saved(d: Path, display: str, idx: int, errors: list[Violation]) -> Iterator[tuple[int, Any]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(d))
    except Exception as e:  # noqa: BLE001
        errors.append(Violation(idx, display, 0, "", f"cannot load the saved datasets directory: {e}"))
        return
    if isinstance(ds, datasets.DatasetDict):
        split = "train" if "train" in ds else next(iter(ds))
        ds = ds[split]
    yield from enumerate(ds, 1)


def read_rows(path: Path, display: str, idx: int, errors: list[Violation]) -> list[tuple[str, int, Any]]:
    """Raw rows of a file or directory as ``[(file, 1-based row number, value), ...]``.

    ``display`` names ``path`` in the result and in violations (files inside a directory are
    ``display/relative/path``); ``idx`` is the source's index in ``spec.datasets``. ``.jsonl``
    is one JSON value a line (blank lines skipped); ``.json`` a list of rows, or an object
    holding one under ``data``, ``train`` or ``rows``; ``.csv`` one row a line, with JSON in the
    ``messages``/``conversations``/``history``/``tools`` cells decoded; ``.parquet`` and
    ``save_to_disk`` directories (the ``train`` split of a ``DatasetDict``, else its first)
    through pyarrow and ``datasets``. Values are returned as read (not necessarily objects).

    Problems are appended to ``errors`` (never raised): invalid JSON, an unsupported suffix,
    an unreadable parquet file or saved directory, a directory holding no dataset files.
    """
    out: list[tuple[str, int, Any]] = []
    if path.is_dir():
        if _is_hf_saved(path):
            return [(display, n, r) for n, r in _read_hf_saved(path, display, idx, errors)]
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in FILE_SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        subdirs = sorted(p for p in path.iterdir() if p.is_dir() and _is_hf_saved(p))
        if not files and not subdirs:
            errors.append(Violation(idx, display, 0, "", f"the directory holds no {'/'.join(FILE_SUFFIXES)} files "
                                    "and is not a saved datasets directory"))
            return out
        for sd in subdirs:
            out += [(f"{display}/{sd.name}", n, r) for n, r in _read_hf_saved(sd, f"{display}/{sd.name}", idx, errors)]
        for f in files:
            if any(s in f.parents for s in subdirs):
                continue
            sub = f"{display}/{f.relative_to(path).as_posix()}"
            out += read_rows(f, sub, idx, errors)
        return out
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        errors.append(Violation(idx, display, 0, "", f"unsupported file type {path.suffix!r}; use {', '.join(FILE_SUFFIXES)}"))
        return out
    return [(display, n, r) for n, r in reader(path, display, idx, errors)]


def sample_rows(rows: list, n: int | None, seed: int = 42) -> list:
    """ms-swift ``#N`` sampling: ``n`` rows from a seeded shuffle, repeating the whole dataset
    (reshuffled each time) when ``n`` exceeds it. ``None`` keeps every row in order."""
    if n is None:
        return list(rows)
    rng = random.Random(seed)
    out: list = []
    while len(out) < n:
        perm = list(rows)
        rng.shuffle(perm)
        out.extend(perm[: n - len(out)])
    return out


def read_source(spec: str, idx: int, *, models=None, seed: int = 42,
                field: str = "spec.datasets") -> dict[str, list[tuple[int, dict]]]:
    """Read one dataset source into ``{file: [(row number, record), ...]}`` (``#N`` sampled
    with :func:`sample_rows`), for converters that read rows one by one (the alignment formats).

    ``idx`` is the source's index in the request field ``field`` (for field violations);
    ``models`` the hub's model source for ``models/{name}`` datasets.

    Raises:
        InvalidArgument: bad ``#N`` or hub source (reason ``BAD_DATASET_SPEC``), missing path
            (``DATASET_NOT_FOUND``), unreadable files (``BAD_DATASET_FILE``, naming file and row),
            no rows (``EMPTY_DATASET``), a row that is not a JSON object (``BAD_DATASET_ROW``).
        NotFound: a ``models/`` dataset the hub lacks.
    """
    where = f"{field}[{idx}]"
    try:
        path_str, count = parse_source(spec)
    except ValueError as e:
        raise InvalidArgument(f"dataset {spec!r}: {e}", reason="BAD_DATASET_SPEC",
                              field_violations=[(where, str(e))]) from None
    try:
        path = locate(path_str, models)
    except SourceError as e:
        if e.reason == "no_hub":
            raise InvalidArgument(f"dataset {path_str}: {e.problem}", reason="BAD_DATASET_SPEC",
                                  field_violations=[(where, "no hub")]) from None
        if e.reason == "not_dataset":
            raise InvalidArgument(f"{path_str} {e.problem}", reason="BAD_DATASET_SPEC",
                                  field_violations=[(where, "not a dataset")]) from None
        raise InvalidArgument(f"dataset {path_str!r}: {e.problem}", reason="DATASET_NOT_FOUND",
                              field_violations=[(where, f"{path_str}: {e.problem}")]) from None
    errors: list[Violation] = []
    raw = read_rows(path, path_str, idx, errors)
    if errors:
        raise_violations(errors, reason="BAD_DATASET_FILE")
    if not raw:
        raise InvalidArgument(f"dataset {path_str!r} holds no rows", reason="EMPTY_DATASET",
                              field_violations=[(where, "no rows")])
    for file, n, value in raw:
        if not isinstance(value, dict):
            raise InvalidArgument(
                f"dataset {file!r}, row {n}: a row must be a JSON object, got a {type(value).__name__}",
                reason="BAD_DATASET_ROW", field_violations=[(where, f"{file} row {n}: not an object")])
    files: dict[str, list[tuple[int, dict]]] = {}
    for file, n, value in sample_rows(raw, count, seed):
        files.setdefault(file, []).append((n, value))
    return files
