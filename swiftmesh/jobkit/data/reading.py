"""Reading dataset sources into raw rows: file formats, local and hub paths, ``#N`` counts.

A *source* is one string, as ms-swift's ``--dataset`` takes it
(https://swift.readthedocs.io/en/latest/Customization/Custom-dataset.html): a local file
(``.jsonl``, ``.json``, ``.csv``, ``.parquet``, ``.txt``), a Hugging Face ``datasets`` directory
written by ``save_to_disk``, a directory of such files (read recursively, hidden paths skipped;
a cloned Hugging Face dataset repository is one), or ``models/{name}`` of a dataset registered in
the hub. A ``#N`` suffix asks for N rows, drawn by :func:`reservoir` (the one ``#N`` sampler).

Rows stream: ``.jsonl``, ``.csv`` and ``.txt`` line by line, ``.parquet`` by record batches and
saved ``datasets`` directories through their memory map, so a multi-GB file is never held
whole (``.json``, one JSON document, is parsed whole).

What a row *means* (SFT conversations, preference pairs, ...) is for the modules that convert
them (:mod:`.sft`, :mod:`.alignment`); this module only yields ``(file, row number, value)``
and collects what it could not read as :class:`Violation` entries.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from swiftmesh.runtime.errors import InvalidArgument

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")
# Record batch of the streamed parquet reader (rows).
PARQUET_BATCH_ROWS = 1024
# Violations listed in one INVALID_ARGUMENT at most.
MAX_VIOLATIONS = 20

T = TypeVar("T")


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


def ignored_warning(what: str, ignored: dict[str, int]) -> str:
    """The warning of ``ignore_columns`` for a job's log: ``what`` (a source, "the datasets")
    and column -> rows it was dropped from, e.g. "warning: ignore_columns dropped 'extra' from 3
    rows of data.jsonl"."""
    cols = ", ".join(f"'{k}' from {n} rows" for k, n in ignored.items())
    return f"warning: ignore_columns dropped {cols} of {what}"


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
        pf = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001
        errors.append(Violation(idx, display, 0, "", f"cannot read parquet: {e}"))
        return
    n = 0
    for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS):
        for row in batch.to_pylist():
            n += 1
            yield n, row


def _read_txt(path: Path, display: str, idx: int, errors: list[Violation]) -> Iterator[tuple[int, Any]]:
    """ms-swift's ``.txt`` dataset: one ``{"text": line}`` row per non-blank line (pre-training)."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                yield n, {"text": line.rstrip("\n")}


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


def _train_split_files(d: Path) -> set[Path] | None:
    """The ``train`` split's files when ``d`` is laid out in splits the way Hugging Face
    ``datasets`` recognises them (``data/train-*``, ``test/``, ...); None when it holds one split."""
    try:
        from datasets.data_files import DataFilesDict, get_data_patterns

        patterns = get_data_patterns(str(d))
        if "train" not in patterns or len(patterns) < 2:
            return None
        return {Path(f) for f in DataFilesDict.from_patterns({"train": patterns["train"]}, base_path=str(d))["train"]}
    except Exception:  # noqa: BLE001  (no datasets, or no files it recognises: read every file)
        return None


def iter_rows(path: Path, display: str, idx: int, errors: list[Violation]) -> Iterator[tuple[str, int, Any]]:
    """Raw rows of a file or directory, streamed, as ``(file, 1-based row number, value)``.

    ``display`` names ``path`` in the result and in violations (files inside a directory are
    ``display/relative/path``); ``idx`` is the source's index in ``spec.datasets``. ``.jsonl``
    is one JSON value a line (blank lines skipped); ``.json`` a list of rows, or an object
    holding one under ``data``, ``train`` or ``rows``; ``.csv`` one row a line, with JSON in the
    ``messages``/``conversations``/``history``/``tools`` cells decoded; ``.txt`` one text row a
    line; ``.parquet`` (in record batches) and ``save_to_disk`` directories (the ``train`` split
    of a ``DatasetDict``, else its first) through pyarrow and ``datasets``. A directory laid out in
    splits as ``datasets`` names them (``data/train-*``, ``data/test-*``, ...) gives its train split
    only, as ``load_dataset`` does (the files read are named in the rows). Values are yielded as
    read (not necessarily objects).

    Problems are appended to ``errors`` (never raised): invalid JSON, an unsupported suffix,
    an unreadable parquet file or saved directory, a directory holding no dataset files.
    """
    if path.is_dir():
        if _is_hf_saved(path):
            for n, r in _read_hf_saved(path, display, idx, errors):
                yield display, n, r
            return
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in FILE_SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        train = _train_split_files(path)
        if train is not None:
            files = [f for f in files if f in train]
        subdirs = sorted(p for p in path.iterdir() if p.is_dir() and _is_hf_saved(p))
        if not files and not subdirs:
            errors.append(Violation(idx, display, 0, "", f"the directory holds no {'/'.join(FILE_SUFFIXES)} files "
                                    "and is not a saved datasets directory"))
            return
        for sd in subdirs:
            for n, r in _read_hf_saved(sd, f"{display}/{sd.name}", idx, errors):
                yield f"{display}/{sd.name}", n, r
        for f in files:
            if any(s in f.parents for s in subdirs):
                continue
            yield from iter_rows(f, f"{display}/{f.relative_to(path).as_posix()}", idx, errors)
        return
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet,
               ".txt": _read_txt}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        errors.append(Violation(idx, display, 0, "", f"unsupported file type {path.suffix!r}; use {', '.join(FILE_SUFFIXES)}"))
        return
    for n, r in reader(path, display, idx, errors):
        yield display, n, r


def read_rows(path: Path, display: str, idx: int, errors: list[Violation]) -> list[tuple[str, int, Any]]:
    """Every row of :func:`iter_rows` in a list (small sources only; large ones stream)."""
    return list(iter_rows(path, display, idx, errors))


def reservoir(items: Iterable[T], n: int, seed: int = 42, *, repeat: bool = True) -> list[T]:
    """ms-swift's ``#N``: ``n`` items of a stream, drawn by seeded reservoir sampling (memory
    O(n), one pass), then shuffled. When the stream holds fewer than ``n`` items, it comes
    ``n // len`` times, each pass shuffled, and the rest are drawn without repetition (as
    ms-swift's ``sample_dataset``); with ``repeat=False`` they are returned once each, shuffled. The one ``#N`` sampler
    of SFT, pre-training and alignment: the same seed picks the same rows for every method.

    Raises:
        ValueError: ``n`` < 1.
    """
    if n < 1:
        raise ValueError(f"the sample size must be >= 1, got {n}")
    rng = random.Random(seed)
    kept: list[T] = []
    seen = 0
    for item in items:
        seen += 1
        if len(kept) < n:
            kept.append(item)
        else:
            j = rng.randrange(seen)
            if j < n:
                kept[j] = item
    if seen >= n or not repeat:
        rng.shuffle(kept)
        return kept
    out: list[T] = []
    for _ in range(n // seen if seen else 0):  # whole passes, each in its own shuffled order
        out += rng.sample(kept, seen)
    return out + rng.sample(kept, n % seen) if seen else out


def sample_rows(rows: list, n: int | None, seed: int = 42) -> list:
    """``#N`` over a list: :func:`reservoir`; ``None`` keeps every row in order."""
    return list(rows) if n is None else reservoir(rows, n, seed)
