"""Training data: loading, format detection, normalisation and validation (service side).

Sources (ms-swift style, one string each): a local file (``.jsonl``, ``.json``, ``.csv``,
``.parquet``), a saved Hugging Face ``datasets`` directory (``save_to_disk``), a directory of
such files, or ``models/{name}`` of a dataset registered in the hub. A ``#N`` suffix samples
N rows (with repetition when N exceeds the rows, as ms-swift does).

Formats, detected per file from its first row:

* ``messages``: OpenAI style, ``{"messages": [{"role": "system"|"user"|"assistant"|"tool",
  "content": "..."}], "tools": [...]}``;
* ShareGPT: ``{"conversations": [{"from": "human"|"gpt"|"system"|..., "value": "..."}],
  "system": "..."}``;
* Alpaca: ``{"instruction": "...", "input": "...", "output": "...", "system": "..."}``;
* query/response: ``{"query": "...", "response": "...", "system": "...",
  "history": [["q", "a"], ...]}``;
* text (continued pre-training): ``{"text": "..."}``.

Every row becomes ``{"messages": [...], "tools": [...]}`` or ``{"text": "..."}``. Rows that do
not parse raise :class:`~swiftmesh.runtime.errors.InvalidArgument` whose field violations
name the source (``spec.datasets[i]``), the file, the 1-based row and the field.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swiftmesh.runtime.errors import InvalidArgument

MESSAGES, SHAREGPT, ALPACA, QUERY_RESPONSE, TEXT = "messages", "sharegpt", "alpaca", "query_response", "text"
FORMATS = (MESSAGES, SHAREGPT, ALPACA, QUERY_RESPONSE, TEXT)
ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "system": "system",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
}
FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
MAX_VIOLATIONS = 20


@dataclass
class Violation:
    source_index: int
    file: str
    row: int
    field: str
    problem: str

    def as_field(self) -> tuple[str, str]:
        where = f"{self.file} row {self.row}" if self.row else self.file
        fld = f" field '{self.field}'" if self.field else ""
        return (f"spec.datasets[{self.source_index}]", f"{where}:{fld} {self.problem}")


@dataclass
class LoadedDataset:
    """Normalised rows of one source, with where they came from."""

    source: str
    format: str
    rows: list[dict[str, Any]]
    # (file, 1-based row) of each normalised row, for error messages after normalisation.
    origins: list[tuple[str, int]] = field(default_factory=list)


class DataError(Exception):
    def __init__(self, violations: list[Violation]) -> None:
        self.violations = violations
        super().__init__(violations[0].as_field()[1] if violations else "bad data")


def raise_violations(violations: list[Violation], reason: str = "BAD_DATASET_ROW") -> None:
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
    """"data.jsonl#100" -> ("data.jsonl", 100); InvalidArgument for a bad count."""
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


# Reading ------------------------------------------------------------------------------------
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
    for n, row in enumerate(ds, 1):
        yield n, row


def read_rows(path: Path, display: str, idx: int, errors: list[Violation]) -> list[tuple[str, int, Any]]:
    """Raw rows of a file or directory as (file, row number, value)."""
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


# Formats ------------------------------------------------------------------------------------
def detect_format(row: Any) -> str | None:
    if not isinstance(row, dict):
        return None
    if "messages" in row:
        return MESSAGES
    if "conversations" in row:
        return SHAREGPT
    if "instruction" in row and "output" in row:
        return ALPACA
    if "query" in row and "response" in row:
        return QUERY_RESPONSE
    if "text" in row:
        return TEXT
    return None


EXPECTED = ("'messages' (OpenAI style), 'conversations' (ShareGPT), 'instruction'+'output' (Alpaca), "
            "'query'+'response', or 'text' (pre-training)")


def _str(v: Any, fieldname: str, problems: list[tuple[str, str]], required: bool = True) -> str:
    if v is None:
        if required:
            problems.append((fieldname, "missing"))
        return ""
    if not isinstance(v, str):
        problems.append((fieldname, f"expected a string, got {type(v).__name__}"))
        return ""
    return v


def _system(row: dict, messages: list, problems) -> None:
    s = row.get("system")
    if s not in (None, ""):
        messages.insert(0, {"role": "system", "content": _str(s, "system", problems)})


def normalise(row: Any, fmt: str) -> tuple[dict[str, Any] | None, list[tuple[str, str]]]:
    """One raw row in format ``fmt`` -> normalised row, or the (field, problem) list."""
    problems: list[tuple[str, str]] = []
    if not isinstance(row, dict):
        return None, [("", f"expected an object, got {type(row).__name__}")]
    if fmt == TEXT:
        t = _str(row.get("text"), "text", problems)
        if not problems and not t.strip():
            problems.append(("text", "empty"))
        return ({"text": t} if not problems else None), problems
    messages: list[dict[str, Any]] = []
    if fmt == MESSAGES:
        msgs = row.get("messages")
        if not isinstance(msgs, list) or not msgs:
            return None, [("messages", "expected a non-empty list of {role, content} objects"
                           if msgs is not None else "missing")]
        for i, m in enumerate(msgs):
            f = f"messages[{i}]"
            if not isinstance(m, dict):
                problems.append((f, f"expected an object, got {type(m).__name__}"))
                continue
            role = m.get("role")
            if role not in ROLES:
                problems.append((f"{f}.role", f"expected one of {list(ROLES)}, got {role!r}"))
                continue
            content = m.get("content")
            if content is None and role == "assistant" and m.get("tool_calls"):
                content = ""
            if isinstance(content, list):  # OpenAI content parts: keep the text parts
                texts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
                if len(texts) != len(content):
                    problems.append((f"{f}.content", "only text content parts are supported"))
                    continue
                content = "".join(texts)
            content = _str(content, f"{f}.content", problems)
            out = {"role": role, "content": content}
            if m.get("tool_calls"):
                out["tool_calls"] = m["tool_calls"]
            if m.get("name") and role == "tool":
                out["name"] = m["name"]
            if m.get("tool_call_id"):
                out["tool_call_id"] = m["tool_call_id"]
            messages.append(out)
        if "system" in row and not any(m["role"] == "system" for m in messages):
            _system(row, messages, problems)
    elif fmt == SHAREGPT:
        conv = row.get("conversations")
        if not isinstance(conv, list) or not conv:
            return None, [("conversations", "expected a non-empty list of {from, value} objects"
                           if conv is not None else "missing")]
        for i, m in enumerate(conv):
            f = f"conversations[{i}]"
            if not isinstance(m, dict):
                problems.append((f, f"expected an object, got {type(m).__name__}"))
                continue
            who = m.get("from", m.get("role"))
            role = SHAREGPT_ROLES.get(who) if isinstance(who, str) else None
            if role is None:
                problems.append((f"{f}.from", f"expected one of {sorted(SHAREGPT_ROLES)}, got {who!r}"))
                continue
            messages.append({"role": role, "content": _str(m.get("value", m.get("content")), f"{f}.value", problems)})
        _system(row, messages, problems)
    elif fmt == ALPACA:
        ins = _str(row.get("instruction"), "instruction", problems)
        inp = _str(row.get("input"), "input", problems, required=False)
        out = _str(row.get("output"), "output", problems)
        messages = [{"role": "user", "content": f"{ins}\n{inp}" if inp else ins}, {"role": "assistant", "content": out}]
        _system(row, messages, problems)
    elif fmt == QUERY_RESPONSE:
        hist = row.get("history") or []
        if not isinstance(hist, list):
            problems.append(("history", "expected a list of [query, response] pairs"))
            hist = []
        for i, pair in enumerate(hist):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                problems.append((f"history[{i}]", "expected a [query, response] pair"))
                continue
            messages.append({"role": "user", "content": _str(pair[0], f"history[{i}][0]", problems)})
            messages.append({"role": "assistant", "content": _str(pair[1], f"history[{i}][1]", problems)})
        messages.append({"role": "user", "content": _str(row.get("query"), "query", problems)})
        messages.append({"role": "assistant", "content": _str(row.get("response"), "response", problems)})
        _system(row, messages, problems)
    if problems:
        return None, problems
    # Structure checks common to every conversation format.
    for i, m in enumerate(messages):
        if m["role"] == "system" and i != 0:
            problems.append((_msg_field(fmt, i, row), "a system message may only come first"))
    if not any(m["role"] == "assistant" and (m["content"].strip() or m.get("tool_calls")) for m in messages):
        problems.append((_conv_field(fmt), "no assistant turn with content to train on"))
    result: dict[str, Any] = {"messages": messages}
    if isinstance(row.get("tools"), (list, str)) and row.get("tools"):
        tools = row["tools"]
        if isinstance(tools, str):
            try:
                tools = json.loads(tools)
            except json.JSONDecodeError:
                problems.append(("tools", "expected a list of tool schemas (or its JSON)"))
        result["tools"] = tools
    return (result if not problems else None), problems


def _conv_field(fmt: str) -> str:
    return {MESSAGES: "messages", SHAREGPT: "conversations", ALPACA: "output", QUERY_RESPONSE: "response"}.get(fmt, "")


def _msg_field(fmt: str, i: int, row: dict) -> str:
    if fmt == MESSAGES:
        offset = 1 if ("system" in row and not any(m.get("role") == "system" for m in row.get("messages", [])
                                                       if isinstance(m, dict))) else 0
        return f"messages[{i - offset}].role"
    if fmt == SHAREGPT:
        return f"conversations[{i}].from"
    return "system"


def load_source(
    source: str,
    idx: int,
    *,
    task: str,
    models=None,
    seed: int = 42,
) -> LoadedDataset:
    """Load, detect, normalise and validate one dataset source. Raises InvalidArgument."""
    errors: list[Violation] = []
    try:
        path_str, count = parse_source(source)
    except ValueError as e:
        raise_violations([Violation(idx, source, 0, "", str(e))], reason="BAD_DATASET")
        raise  # unreachable
    display = path_str
    if path_str.startswith("models/"):
        if models is None:
            raise_violations([Violation(idx, path_str, 0, "", "hub datasets need the hub")], reason="BAD_DATASET")
        info = models.get(path_str)  # NotFound propagates
        if info.format != "dataset":
            raise_violations([Violation(idx, path_str, 0, "",
                                        f"is a {info.format} model in the hub, not a dataset")], reason="BAD_DATASET")
        path = Path(models.materialize(path_str))
    else:
        path = Path(path_str).expanduser()
        if not path.exists():
            raise_violations([Violation(idx, path_str, 0, "", "no such file or directory")], reason="DATASET_NOT_FOUND")
    raw = read_rows(path, display, idx, errors)
    raise_violations(errors)
    if not raw:
        raise_violations([Violation(idx, display, 0, "", "holds no rows")], reason="BAD_DATASET")
    # Detect the format per file, from its first row.
    formats: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    origins: list[tuple[str, int]] = []
    for file, n, value in raw:
        fmt = formats.get(file)
        if fmt is None:
            fmt = detect_format(value)
            if fmt is None:
                keys = sorted(value) if isinstance(value, dict) else type(value).__name__
                errors.append(Violation(idx, file, n, "", f"unknown format (fields {keys}); expected {EXPECTED}"))
                formats[file] = "?"
                continue
            if task == "sft" and fmt == TEXT:
                errors.append(Violation(idx, file, n, "text",
                                        "plain 'text' rows are for task pt; sft needs conversations " + f"({EXPECTED})"))
                formats[file] = "?"
                continue
            formats[file] = fmt
        if fmt == "?":
            continue
        norm, problems = normalise(value, fmt)
        if problems:
            for fld, prob in problems:
                errors.append(Violation(idx, file, n, fld, prob))
            if len(errors) >= MAX_VIOLATIONS:
                break
            continue
        rows.append(norm)
        origins.append((file, n))
    raise_violations(errors)
    if count is not None:
        rng = random.Random(seed)
        order = list(range(len(rows)))
        picked: list[int] = []
        while len(picked) + len(order) <= count:
            picked += order
        rest = rng.sample(order, count - len(picked))
        picked += rest
        rng.shuffle(picked)
        rows = [rows[i] for i in picked]
        origins = [origins[i] for i in picked]
    fmt_all = ",".join(sorted(set(formats.values())))
    return LoadedDataset(source=source, format=fmt_all, rows=rows, origins=origins)


def split(rows: list, ratio: float, seed: int) -> tuple[list, list]:
    """Shuffle with ``seed`` and hold out ``ratio`` of the rows (at least one when ratio > 0)."""
    if ratio <= 0 or len(rows) < 2:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = min(len(rows) - 1, max(1, round(ratio * len(rows))))
    ev = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in ev], [r for i, r in enumerate(rows) if i in ev]
