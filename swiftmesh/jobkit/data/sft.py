"""SFT and pre-training rows: ms-swift's conversation formats, normalised and validated.

Formats (ms-swift's "standard dataset formats",
https://swift.readthedocs.io/en/latest/Customization/Custom-dataset.html), detected per file
from its first row:

* ``messages``: OpenAI style, ``{"messages": [{"role": "system"|"user"|"assistant"|"tool",
  "content": "..."}], "tools": [...]}``;
* ShareGPT: ``{"conversations": [{"from": "human"|"gpt"|"system"|..., "value": "..."}],
  "system": "..."}``, or ms-swift's ``{"conversation": [{"human": "...", "assistant": "..."}]}``;
* Alpaca: ``{"instruction": "...", "input": "...", "output": "...", "system": "..."}``;
* query/response: ``{"query": "...", "response": "...", "system": "...",
  "history": [["q", "a"], ...]}``;
* prompt/completion (TRL): ``{"prompt": "..." | [messages], "completion": "..." | [messages]}``;
* text (continued pre-training): ``{"text": "..."}``.

ms-swift's agent roles ``tool_call``/``tool_response`` become assistant/tool turns; the
multimodal columns ``images``/``videos``/``audios`` (and ``objects``) are carried as they are.
Every row becomes ``{"messages": [...], "tools": [...]}`` or ``{"text": "..."}``. Nothing is
dropped silently: a column with content that the row's format does not read, a file mixing
formats, an empty reply and a conversation that does not end with the assistant's reply are
errors. Rows that do not parse raise :class:`~swiftmesh.runtime.errors.InvalidArgument` whose
field violations name the source (``spec.datasets[i]``), the file, the 1-based row and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from swiftmesh.jobkit.data.fields import AGENT_ROLES, carried, carries_content, unused_columns
from swiftmesh.jobkit.data.reading import MAX_VIOLATIONS, Violation, raise_violations
from swiftmesh.jobkit.data.stream import collect

MESSAGES, SHAREGPT, ALPACA, QUERY_RESPONSE, PROMPT_COMPLETION, TEXT = (
    "messages", "sharegpt", "alpaca", "query_response", "prompt_completion", "text")
ROLES = ("system", "user", "assistant", "tool")
# The columns each format reads (besides the carried multimodal ones).
USES = {
    MESSAGES: {"messages", "system", "tools"},
    SHAREGPT: {"conversations", "conversation", "system", "tools"},
    ALPACA: {"instruction", "input", "output", "system", "history", "tools"},
    QUERY_RESPONSE: {"query", "response", "system", "history", "tools"},
    PROMPT_COMPLETION: {"prompt", "completion", "system", "tools"},
    TEXT: {"text"},
}
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
    # Column -> rows in which it was dropped (``ignore_columns`` only).
    ignored: dict[str, int] = field(default_factory=dict)


def detect_format(row: Any) -> str | None:
    """The format of a raw row by its fields (``messages``, ``conversations``,
    ``instruction`` + ``output``, ``query`` + ``response``, ``text``, in that order); None if
    it fits none or is not an object."""
    if not isinstance(row, dict):
        return None
    if "messages" in row:
        return MESSAGES
    if "conversations" in row or "conversation" in row:
        return SHAREGPT
    if "instruction" in row and "output" in row:
        return ALPACA
    if "query" in row and "response" in row:
        return QUERY_RESPONSE
    if "prompt" in row and "completion" in row:
        return PROMPT_COMPLETION
    if "text" in row:
        return TEXT
    return None


EXPECTED = ("'messages' (OpenAI style), 'conversations' (ShareGPT), 'instruction'+'output' (Alpaca), "
            "'query'+'response', 'prompt'+'completion' (TRL), or 'text' (pre-training)")


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


def _parse_messages(msgs: list, key: str, problems: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """OpenAI-style messages of field ``key`` (ms-swift's agent roles mapped); problems appended."""
    out_list: list[dict[str, Any]] = []
    for i, m in enumerate(msgs):
        f = f"{key}[{i}]"
        if not isinstance(m, dict):
            problems.append((f, f"expected an object, got {type(m).__name__}"))
            continue
        role = AGENT_ROLES.get(m.get("role"), m.get("role"))
        if role not in ROLES:
            problems.append((f"{f}.role", f"expected one of {list(ROLES) + list(AGENT_ROLES)}, got {role!r}"))
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
        out_list.append(out)
    return out_list


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
        messages = _parse_messages(msgs, "messages", problems)
        if not any(m["role"] == "system" for m in messages):
            _system(row, messages, problems)
        elif carries_content(row.get("system")) and row["system"] != messages[0]["content"]:
            problems.append(("system", "the row has both a 'system' column and a different system message: keep one"))
    elif fmt == SHAREGPT:
        key = "conversations" if "conversations" in row else "conversation"
        conv = row.get(key)
        if not isinstance(conv, list) or not conv:
            return None, [(key, "expected a non-empty list of {from, value} objects"
                           if conv is not None else "missing")]
        if key == "conversation":  # ms-swift: [{"human": q, "assistant": a}, ...]
            conv = [{"from": who, "value": m.get(who)} for m in conv if isinstance(m, dict)
                    for who in ("human", "assistant") if who in m]
        for i, m in enumerate(conv):
            f = f"{key}[{i}]"
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
    elif fmt in (ALPACA, QUERY_RESPONSE):
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
        if fmt == ALPACA:
            ins = _str(row.get("instruction"), "instruction", problems)
            inp = _str(row.get("input"), "input", problems, required=False)
            messages.append({"role": "user", "content": f"{ins}\n{inp}" if inp else ins})
            messages.append({"role": "assistant", "content": _str(row.get("output"), "output", problems)})
        else:
            messages.append({"role": "user", "content": _str(row.get("query"), "query", problems)})
            messages.append({"role": "assistant", "content": _str(row.get("response"), "response", problems)})
        _system(row, messages, problems)
    elif fmt == PROMPT_COMPLETION:
        for key, role in (("prompt", "user"), ("completion", "assistant")):
            v = row.get(key)
            if isinstance(v, list) and v:
                messages += _parse_messages(v, key, problems)
            else:
                messages.append({"role": role, "content": _str(v, key, problems)})
        _system(row, messages, problems)
    if problems:
        return None, problems
    # Structure checks common to every conversation format.
    for i, m in enumerate(messages):
        if m["role"] == "system" and i != 0:
            problems.append((_msg_field(fmt, i, row), "a system message may only come first"))
    if not any(m["role"] == "assistant" and (m["content"].strip() or m.get("tool_calls")) for m in messages):
        problems.append((_conv_field(fmt), "no assistant turn with content to train on"))
    elif messages[-1]["role"] != "assistant":
        problems.append((_msg_field(fmt, len(messages) - 1, row),
                         (f"the conversation must end with the assistant's reply, got a final {messages[-1]['role']!r} "
                          "turn that nothing would train on")))
    else:
        for i, m in enumerate(messages):
            if m["role"] == "assistant" and not m["content"].strip() and not m.get("tool_calls"):
                problems.append((_msg_field(fmt, i, row).replace(".role", ".content").replace(".from", ".value"),
                                 "the assistant's reply is empty"))
    result: dict[str, Any] = {"messages": messages}
    if isinstance(row.get("tools"), (list, str)) and row.get("tools"):
        tools = row["tools"]
        if isinstance(tools, str):
            try:
                tools = json.loads(tools)
            except json.JSONDecodeError:
                problems.append(("tools", "expected a list of tool schemas (or its JSON)"))
        result["tools"] = tools
    result.update(carried(row))
    return (result if not problems else None), problems


def _conv_field(fmt: str) -> str:
    return {MESSAGES: "messages", SHAREGPT: "conversations", ALPACA: "output", QUERY_RESPONSE: "response",
            PROMPT_COMPLETION: "completion"}.get(fmt, "")


def _msg_field(fmt: str, i: int, row: dict) -> str:
    if fmt == MESSAGES:
        offset = 1 if ("system" in row and not any(m.get("role") == "system" for m in row.get("messages", [])
                                                       if isinstance(m, dict))) else 0
        return f"messages[{i - offset}].role"
    if fmt == SHAREGPT:
        return f"conversations[{i - (1 if row.get('system') else 0)}].from"
    return {ALPACA: "output", QUERY_RESPONSE: "response", PROMPT_COMPLETION: "completion"}.get(fmt, "system") \
        if i else "system"


class RowNormaliser:
    """Detects, checks and normalises the rows of one source for ``task`` (``sft`` or ``pt``),
    one at a time, collecting :class:`Violation` entries (up to :data:`MAX_VIOLATIONS`, then
    raising) instead of stopping at the first; ``source_index`` names the source in them."""

    def __init__(self, source_index: int, task: str, *, ignore_columns: bool = False) -> None:
        self.idx, self.task, self.ignore_columns = source_index, task, ignore_columns
        self.errors: list[Violation] = []
        self.formats: dict[str, tuple[str, int]] = {}  # file -> (format, its first row)
        self.counts: dict[str, dict[str, int]] = {}  # file -> {format: rows}
        self.ignored: dict[str, int] = {}  # column -> rows it was dropped from

    def format_names(self) -> str:
        """The formats read, comma-separated (e.g. "alpaca,messages")."""
        return ",".join(sorted({f for f, _ in self.formats.values()}))

    def convert(self, file: str, n: int, value: dict) -> tuple[dict[str, Any], tuple[str, int]] | None:
        """``(normalised row, (file, row))``, or None when the row has problems (recorded).

        Raises:
            InvalidArgument: once :data:`MAX_VIOLATIONS` problems are recorded.
        """
        idx, errors, task = self.idx, self.errors, self.task
        if len(errors) >= MAX_VIOLATIONS:
            raise_violations(errors)
        fmt = detect_format(value)
        if fmt is None:
            errors.append(Violation(idx, file, n, "", f"unknown format (fields {sorted(value)}); expected {EXPECTED}"))
            return None
        if task == "sft" and fmt == TEXT:
            errors.append(Violation(idx, file, n, "text",
                                    "plain 'text' rows are for task pt; sft needs conversations " + f"({EXPECTED})"))
            return None
        first = self.formats.setdefault(file, (fmt, n))
        if first[0] != fmt:
            errors.append(Violation(idx, file, n, "", f"the row is in the {fmt} format but the rows before it are "
                                    f"{first[0]} (row {first[1]}); one file holds one format"))
            return None
        unused = unused_columns(value, USES[fmt])
        if unused and not self.ignore_columns:
            errors.append(Violation(idx, file, n, unused[0], f"carries content that the {fmt} format does not use "
                                    f"(it reads {', '.join(sorted(USES[fmt]))}); rename it to what it means, remove it, "
                                    "or pass --ignore_columns to drop such columns with a warning"))
            return None
        for k in unused:
            self.ignored[k] = self.ignored.get(k, 0) + 1
        norm, problems = normalise(value, fmt)
        for fld, prob in problems:
            errors.append(Violation(idx, file, n, fld, prob))
        if problems:
            return None
        counts = self.counts.setdefault(file, {})
        counts[fmt] = counts.get(fmt, 0) + 1
        return norm, (file, n)


def load_source(
    source: str,
    idx: int,
    *,
    task: str,
    models=None,
    seed: int = 42,
    ignore_columns: bool = False,
) -> LoadedDataset:
    """Read (streamed), detect, normalise, validate and sample one dataset source (see :mod:`.stream`).

    ``idx`` is the source's index in ``spec.datasets``; ``task`` is ``sft`` (conversations
    only) or ``pt`` (``text`` rows too); ``models`` the hub's model source for ``models/``
    datasets; ``seed`` seeds the ``#N`` sampling (:func:`~.reading.reservoir`, the sampler the
    alignment methods use too); ``ignore_columns`` drops columns with content that the row's
    format does not read (counted in ``LoadedDataset.ignored``) instead of failing.

    Raises:
        InvalidArgument: bad ``#N`` or hub source (reason ``BAD_DATASET_SPEC``), missing path
            (``DATASET_NOT_FOUND``), unreadable files or rows, an unknown format, a file mixing
            formats, an unused column with content, ``text`` rows for sft (``BAD_DATASET_ROW``,
            up to 20 violations naming file, row and field).
        NotFound: a ``models/`` dataset the hub lacks.
    """
    conv = RowNormaliser(idx, task, ignore_columns=ignore_columns)
    picked = collect(source, idx, conv.convert, models=models, seed=seed, file_reason="BAD_DATASET_ROW")
    raise_violations(conv.errors)
    return LoadedDataset(source=source, format=conv.format_names(), rows=[r for r, _ in picked],
                         origins=[o for _, o in picked], ignored=conv.ignored)
