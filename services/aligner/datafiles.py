"""Reading local dataset files into records, with ms-swift's ``#N`` sampling.

This module knows nothing about dataset *formats* (which fields a row must have); it only
turns a dataset spec such as ``"data/prefs.jsonl#500"`` into a list of ``(row_number,
record)`` pairs and reports unreadable input precisely (file, row, what is wrong). Format
detection for alignment lives in :mod:`swiftmesh.services.aligner.data`; the trainer's SFT
formats can build on the same reader.

Supported inputs (by suffix, case-insensitive):

* ``.jsonl`` / ``.ndjson``: one JSON object per line; row numbers are line numbers (blank
  lines are skipped but counted).
* ``.json``: a JSON array of objects (or an object holding one such array, e.g.
  ``{"data": [...]}``); a file that is really JSON Lines is read as such.
* ``.csv`` / ``.tsv``: a header row, then records; row 1 is the first record (line 2).
  Cells holding JSON arrays of objects (e.g. a ``messages`` column) are decoded.
* ``.parquet``: every row of every row group.
* a directory written by ``datasets.Dataset.save_to_disk``.

Sampling, ``path#N`` (as in ms-swift): N rows drawn with a seeded shuffle; when N exceeds
the file's size, whole shuffled copies are repeated and the remainder drawn from one more.
"""

from __future__ import annotations

import csv
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swiftmesh.runtime.errors import InvalidArgument

SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet")

_SAMPLE_RE = re.compile(r"^(?P<path>.+?)#(?P<n>\d+)$")


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed dataset argument: ``path`` and the optional ``#N`` sample size."""

    path: str
    sample: int | None = None
    # The spec as the user wrote it (for messages).
    raw: str = ""

    @property
    def name(self) -> str:
        return self.raw or self.path


def parse_spec(spec: str) -> DatasetSpec:
    """Split ``"path#N"`` into path and sample size.

    Raises:
        InvalidArgument: empty spec, or ``#0``.
    """
    spec = (spec or "").strip()
    if not spec:
        raise InvalidArgument("empty dataset path", reason="BAD_DATASET_SPEC")
    m = _SAMPLE_RE.match(spec)
    if not m:
        return DatasetSpec(spec, None, spec)
    n = int(m.group("n"))
    if n <= 0:
        raise InvalidArgument(
            f"dataset {spec!r}: the sample size after '#' must be at least 1",
            reason="BAD_DATASET_SPEC",
        )
    return DatasetSpec(m.group("path"), n, spec)


def _bad(spec_name: str, message: str, reason: str = "BAD_DATASET_FILE", row: int | None = None) -> InvalidArgument:
    field = f"{spec_name}:{row}" if row is not None else spec_name
    return InvalidArgument(f"dataset {spec_name!r}: {message}", reason=reason, field_violations=[(field, message)])


def _maybe_json_cell(value: Any) -> Any:
    """CSV cells are strings; decode those that hold a JSON array of objects or a bool/number list."""
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("[") and s.endswith("]"):
            try:
                decoded = json.loads(s)
            except ValueError:
                return value
            if isinstance(decoded, list) and all(isinstance(x, dict) for x in decoded):
                return decoded
    return value


def read_records(path: str | Path, *, spec_name: str | None = None) -> list[tuple[int, dict[str, Any]]]:
    """Read every record of a local dataset file as ``(row_number, dict)`` pairs.

    Row numbers are 1-based: the line number for JSON Lines, the record number for the
    other formats (for CSV the header is not counted).

    Raises:
        InvalidArgument: the path does not exist (reason ``DATASET_NOT_FOUND``), the suffix is
            not supported, a row is not valid JSON or not an object (reason
            ``BAD_DATASET_FILE``, naming the row), or the file holds no rows.
    """
    p = Path(path).expanduser()
    name = spec_name or str(path)
    if not p.exists():
        raise _bad(name, f"no such file or directory: {p}", reason="DATASET_NOT_FOUND")
    if p.is_dir():
        records = _read_saved_dataset(p, name)
    else:
        suffix = p.suffix.lower()
        if suffix in (".jsonl", ".ndjson"):
            records = _read_jsonl(p, name)
        elif suffix == ".json":
            records = _read_json(p, name)
        elif suffix in (".csv", ".tsv"):
            records = _read_csv(p, name, delimiter="\t" if suffix == ".tsv" else ",")
        elif suffix == ".parquet":
            records = _read_parquet(p, name)
        else:
            raise _bad(
                name,
                f"unsupported file type {suffix or '(none)'!r}; use one of {', '.join(SUFFIXES)} "
                "or a directory saved with datasets' save_to_disk",
            )
    if not records:
        raise _bad(name, "the dataset has no rows", reason="EMPTY_DATASET")
    return records


def _read_jsonl(p: Path, name: str) -> list[tuple[int, dict[str, Any]]]:
    out = []
    with open(p, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise _bad(name, f"row {lineno} is not valid JSON: {e.msg} (column {e.colno})", row=lineno) from None
            if not isinstance(obj, dict):
                raise _bad(name, f"row {lineno} is a JSON {type(obj).__name__}, not an object", row=lineno)
            out.append((lineno, obj))
    return out


def _read_json(p: Path, name: str) -> list[tuple[int, dict[str, Any]]]:
    text = p.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # JSON Lines in a .json file
            return _read_jsonl(p, name)
        raise _bad(name, f"not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) == 1:
            data = lists[0]
        else:
            return [(1, data)]
    if not isinstance(data, list):
        raise _bad(name, f"expected a JSON array of objects, got a {type(data).__name__}")
    out = []
    for i, obj in enumerate(data, 1):
        if not isinstance(obj, dict):
            raise _bad(name, f"row {i} is a JSON {type(obj).__name__}, not an object", row=i)
        out.append((i, obj))
    return out


def _read_csv(p: Path, name: str, delimiter: str) -> list[tuple[int, dict[str, Any]]]:
    csv.field_size_limit(1 << 30)
    out = []
    with open(p, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        for i, row in enumerate(reader, 1):
            if None in row:
                raise _bad(name, f"row {i} has more cells than the header", row=i)
            out.append((i, {k: _maybe_json_cell(v) for k, v in row.items() if k is not None}))
    return out


def _read_parquet(p: Path, name: str) -> list[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(p).to_pylist()
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise _bad(name, f"not a readable parquet file: {e}") from None
    return list(enumerate(rows, 1))


def _read_saved_dataset(p: Path, name: str) -> list[tuple[int, dict[str, Any]]]:
    if not ((p / "dataset_info.json").exists() or (p / "state.json").exists() or (p / "dataset_dict.json").exists()):
        raise _bad(name, "is a directory but not one written by datasets' save_to_disk")
    import datasets

    ds = datasets.load_from_disk(str(p))
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise _bad(name, f"a DatasetDict without a 'train' split (splits: {', '.join(ds)})")
        ds = ds["train"]
    return list(enumerate(ds.to_list(), 1))


def sample_records(records: list[Any], n: int | None, seed: int = 42) -> list[Any]:
    """ms-swift ``#N`` sampling: ``n`` records from a seeded shuffle, repeating the whole
    dataset (reshuffled each time) when ``n`` is larger than it. ``None`` keeps all, in order."""
    if n is None:
        return list(records)
    rng = random.Random(seed)
    out: list[Any] = []
    while len(out) < n:
        perm = list(records)
        rng.shuffle(perm)
        out.extend(perm[: n - len(out)])
    return out


def load_spec(spec: str, *, seed: int = 42) -> tuple[DatasetSpec, list[tuple[int, dict[str, Any]]]]:
    """Parse ``spec``, read the file, apply ``#N`` sampling. Returns the parsed spec and the
    ``(row_number, record)`` pairs (row numbers refer to the file, also after sampling)."""
    ds = parse_spec(spec)
    records = read_records(ds.path, spec_name=ds.name)
    return ds, sample_records(records, ds.sample, seed)
