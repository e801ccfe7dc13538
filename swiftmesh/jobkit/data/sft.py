"""SFT and pre-training rows: ms-swift's conversation formats, normalised and validated.

Formats (ms-swift's "standard dataset formats",
https://swift.readthedocs.io/en/latest/Customization/Custom-dataset.html), detected per file
from its first row:

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

import json
import random
from dataclasses import dataclass, field
from typing import Any

from swiftmesh.jobkit.data.reading import (
    MAX_VIOLATIONS,
    SourceError,
    Violation,
    locate,
    parse_source,
    raise_violations,
    read_rows,
)

MESSAGES, SHAREGPT, ALPACA, QUERY_RESPONSE, TEXT = "messages", "sharegpt", "alpaca", "query_response", "text"
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


@dataclass
class LoadedDataset:
    """Normalised rows of one source, with where they came from."""

    source: str
    # The formats its files were read as, comma-separated (e.g. "messages,sharegpt").
    format: str
    rows: list[dict[str, Any]]
    # (file, 1-based row) of each normalised row, for error messages after normalisation.
    origins: list[tuple[str, int]] = field(default_factory=list)


def detect_format(row: Any) -> str | None:
    """The format of a raw row by its fields (``messages``, ``conversations``,
    ``instruction`` + ``output``, ``query`` + ``response``, ``text``, in that order); None if
    it fits none or is not an object."""
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
    """Normalise one raw row read as format ``fmt`` (one of the names above).

    Returns ``(row, [])`` with ``row`` ``{"messages": [{"role", "content", ...}], "tools"?: [...]}``
    (a ``system`` field becomes the first message; ShareGPT roles map to OpenAI's) or
    ``{"text": "..."}``; or ``(None, [(field, problem), ...])`` when the row is not valid: a
    missing or non-string value, an unknown role, a system message after the first, no
    assistant turn with content to train on.
    """
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
    """Read, detect, normalise and validate one dataset source (see :mod:`.reading`).

    ``idx`` is the source's index in ``spec.datasets``; ``task`` is ``sft`` (conversations
    only) or ``pt`` (``text`` rows too); ``models`` the hub's model source for ``models/``
    datasets; ``seed`` seeds the ``#N`` sampling (N rows drawn without repetition, or every
    row N // rows times and the rest drawn, when N exceeds them; then shuffled).

    Raises:
        InvalidArgument: bad ``#N`` or hub source (reason ``BAD_DATASET``), missing path
            (``DATASET_NOT_FOUND``), unreadable files or rows, an unknown format, ``text`` rows
            for sft (``BAD_DATASET_ROW``, up to 20 violations naming file, row and field).
        NotFound: a ``models/`` dataset the hub lacks.
    """
    errors: list[Violation] = []
    try:
        path_str, count = parse_source(source)
    except ValueError as e:
        raise_violations([Violation(idx, source, 0, "", str(e))], reason="BAD_DATASET")
        raise  # unreachable
    display = path_str
    try:
        path = locate(path_str, models)
    except SourceError as e:
        raise_violations([Violation(idx, path_str, 0, "", e.problem)],
                         reason="DATASET_NOT_FOUND" if e.reason == "not_found" else "BAD_DATASET")
        raise  # unreachable
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
