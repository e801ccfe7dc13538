"""Alignment datasets: format detection, validation and conversion to TRL's columns.

Each alignment method trains on one *kind* of data:

==========  ===============  =========================================================
kind        methods          accepted row formats (detected per row)
==========  ===============  =========================================================
paired      dpo orpo cpo     ``prompt``/``chosen``/``rejected`` (text, or lists of messages);
            simpo rm         ``messages`` ending in the preferred assistant turn +
                             ``rejected_response`` (ms-swift); ``messages`` +
                             ``rejected_messages``; ``chosen``/``rejected`` as two full
                             conversations (implicit prompt); ``query``/``response``/
                             ``rejected_response`` (ms-swift, optional ``history``, ``system``)
unpaired    kto              ``prompt``/``completion``/``label``; ``messages`` + ``label``
                             (ms-swift); ``query``/``response``/``label``; or any paired
                             format (each pair gives one desirable and one undesirable row)
prompt      ppo grpo         ``prompt`` (text or messages); ``messages`` ending in a user
                             turn (a final assistant turn is dropped and kept as ``solution``
                             for reward functions, as ms-swift does); ``query``; or any
                             paired/unpaired format (its responses are ignored)
==========  ===============  =========================================================

Files are read with the trainer's reader (:func:`swiftmesh.services.trainer.data.read_rows`:
local ``.jsonl``/``.json``/``.csv``/``.parquet`` files, directories of them, ``save_to_disk``
directories, ``models/{name}`` datasets in the hub), with ms-swift's ``#N`` sampling.

Rows are converted to the columns TRL's trainers read: ``prompt``/``chosen``/``rejected``
(plus ``margin`` for reward models), ``prompt``/``completion``/``label`` for KTO and
``prompt`` for PPO/GRPO (plus the row's other scalar columns, which GRPO passes to reward
functions). Conversational rows stay conversational (``[{"role", "content"}]`` lists, rendered
by the model's chat template inside TRL); plain-text rows stay plain text. A dataset must be
all one or the other.

Anything that does not fit raises :class:`~swiftmesh.runtime.errors.InvalidArgument`
(reason ``BAD_DATASET_ROW``) naming the dataset, the row, the fields the row has, the
formats the chosen method accepts with an example of each, and a hint when the row is a
near miss (a misspelt field, ms-swift's ``rejected`` vs ``rejected_response``, SFT data
given to a preference method, KTO data given to DPO, ...).
"""

from __future__ import annotations

import difflib
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from swiftmesh.runtime.errors import FieldViolation, InvalidArgument

Kind = Literal["paired", "unpaired", "prompt"]
Style = Literal["conversational", "standard"]

METHOD_KIND: dict[str, Kind] = {
    "dpo": "paired",
    "orpo": "paired",
    "cpo": "paired",
    "simpo": "paired",
    "rm": "paired",
    "kto": "unpaired",
    "ppo": "prompt",
    "grpo": "prompt",
}

METHOD_TITLE = {
    "dpo": "DPO",
    "orpo": "ORPO",
    "cpo": "CPO",
    "simpo": "SimPO",
    "rm": "reward-model (rm)",
    "kto": "KTO",
    "ppo": "PPO",
    "grpo": "GRPO",
}

KIND_NEEDS = {
    "paired": "preference pairs: a prompt, a preferred (chosen) and a dispreferred (rejected) reply",
    "unpaired": "single replies labelled desirable (label true) or undesirable (label false)",
    "prompt": "prompts only; the replies are generated during training",
}

ROLES = {"system", "user", "assistant", "tool"}
_SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user",
                   "assistant": "assistant", "tool": "tool", "function": "tool", "observation": "tool"}
_TRUE = {"true", "1", "yes", "y", "t", "desirable", "good", "chosen"}
_FALSE = {"false", "0", "no", "n", "f", "undesirable", "bad", "rejected"}


class RowError(ValueError):
    """A row fits a format's fields but a value is wrong (``field`` names it)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


# --------------------------------------------------------------------------- values


def _text(row: dict, key: str, *, allow_empty: bool = False) -> str:
    v = row.get(key)
    if v is None:
        raise RowError(key, f"'{key}' is missing or null")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = str(v)
    if not isinstance(v, str):
        raise RowError(key, f"'{key}' must be a string, got {type(v).__name__}")
    if not allow_empty and not v.strip():
        raise RowError(key, f"'{key}' is empty")
    return v


def _is_messages(v: Any) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(isinstance(m, dict) for m in v)


def _messages(row: dict, key: str) -> list[dict[str, Any]]:
    """Validate a list of chat messages; ShareGPT ``from``/``value`` entries are converted."""
    v = row.get(key)
    if isinstance(v, str):
        s = v.strip()
        if s.startswith("["):
            try:
                v = json.loads(s)
            except ValueError:
                pass
    if not isinstance(v, list):
        raise RowError(key, f"'{key}' must be a list of {{\"role\", \"content\"}} messages, got {type(v).__name__}")
    if not v:
        raise RowError(key, f"'{key}' is an empty list")
    out = []
    for i, m in enumerate(v):
        if not isinstance(m, dict):
            raise RowError(f"{key}[{i}]", f"'{key}[{i}]' must be an object with 'role' and 'content', got {type(m).__name__}")
        if "role" not in m and "from" in m:  # ShareGPT entry
            role = _SHAREGPT_ROLES.get(str(m.get("from")))
            content = m.get("value")
        else:
            role = m.get("role")
            content = m.get("content")
        if role not in ROLES:
            raise RowError(
                f"{key}[{i}].role",
                f"'{key}[{i}].role' is {role!r}; expected one of {', '.join(sorted(ROLES))}",
            )
        if content is None and role == "assistant" and m.get("tool_calls"):
            content = ""
        if not isinstance(content, (str, list)):
            raise RowError(f"{key}[{i}].content", f"'{key}[{i}].content' must be a string, got {type(content).__name__}")
        msg = {"role": role, "content": content}
        out.append(msg)
    return out


def _label(row: dict, key: str = "label") -> bool:
    v = row.get(key)
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in _TRUE | _FALSE:
        return v.strip().lower() in _TRUE
    raise RowError(key, f"'{key}' must be true/false (or 1/0), got {v!r}")


def _with_system(row: dict, messages: list[dict]) -> list[dict]:
    system = row.get("system")
    if isinstance(system, str) and system.strip() and messages[0]["role"] != "system":
        return [{"role": "system", "content": system}, *messages]
    return messages


def _history(row: dict) -> list[dict]:
    """ms-swift's legacy ``history``: ``[[query, response], ...]``."""
    h = row.get("history")
    if h in (None, "", []):
        return []
    if isinstance(h, str):
        try:
            h = json.loads(h)
        except ValueError:
            raise RowError("history", "'history' must be a list of [query, response] pairs") from None
    out = []
    if not isinstance(h, list):
        raise RowError("history", "'history' must be a list of [query, response] pairs")
    for i, pair in enumerate(h):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise RowError(f"history[{i}]", f"'history[{i}]' must be a [query, response] pair of strings")
        out += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return out


def _split_final_assistant(messages: list[dict], key: str) -> tuple[list[dict], dict]:
    if messages[-1]["role"] != "assistant":
        raise RowError(
            key,
            f"the last message of '{key}' must be the assistant's reply (role 'assistant'), "
            f"got role {messages[-1]['role']!r}",
        )
    if len(messages) < 2:
        raise RowError(key, f"'{key}' has only the assistant's reply; it needs the prompt turns before it")
    return messages[:-1], messages[-1]


def _common_prefix_len(a: list, b: list) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# --------------------------------------------------------------------------- formats


@dataclass(frozen=True)
class Format:
    """One row layout: the fields that identify it, an example, and its converter."""

    name: str
    kind: Kind
    required: tuple[str, ...]
    description: str
    example: dict
    convert: Callable[[dict], list[dict]]
    # Rows of this format are conversational (None: depends on the values).
    conversational: bool | None = None

    def matches(self, row: dict) -> bool:
        return all(k in row and row[k] is not None for k in self.required)


def _pair_out(prompt, chosen, rejected) -> dict:
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _conv_messages_rejected_response(row: dict) -> list[dict]:
    msgs = _with_system(row, _messages(row, "messages"))
    prompt, chosen = _split_final_assistant(msgs, "messages")
    rejected = _text(row, "rejected_response")
    return [_pair_out(prompt, [chosen], [{"role": "assistant", "content": rejected}])]


def _conv_messages_rejected_messages(row: dict) -> list[dict]:
    msgs = _with_system(row, _messages(row, "messages"))
    rej = _with_system(row, _messages(row, "rejected_messages"))
    prompt, chosen = _split_final_assistant(msgs, "messages")
    rprompt, rejected = _split_final_assistant(rej, "rejected_messages")
    if rprompt != prompt:
        raise RowError(
            "rejected_messages",
            "'rejected_messages' must repeat the turns of 'messages' and differ only in the final assistant reply",
        )
    return [_pair_out(prompt, [chosen], [rejected])]


def _as_conv(value: Any, role: str) -> list[dict]:
    return value if isinstance(value, list) else [{"role": role, "content": value}]


def _conv_prompt_chosen_rejected(row: dict) -> list[dict]:
    vals = {}
    conv = any(_is_messages(row.get(k)) for k in ("prompt", "chosen", "rejected"))
    for k in ("prompt", "chosen", "rejected"):
        vals[k] = _messages(row, k) if _is_messages(row.get(k)) else _text(row, k, allow_empty=(k == "prompt"))
    if not conv:
        return [_pair_out(vals["prompt"], vals["chosen"], vals["rejected"])]
    prompt = _with_system(row, _as_conv(vals["prompt"], "user"))
    chosen = _as_conv(vals["chosen"], "assistant")
    rejected = _as_conv(vals["rejected"], "assistant")
    for k, v in (("chosen", chosen), ("rejected", rejected)):
        if v[-1]["role"] != "assistant":
            raise RowError(k, f"the last message of '{k}' must have role 'assistant', got {v[-1]['role']!r}")
    return [_pair_out(prompt, chosen, rejected)]


def _conv_implicit_prompt(row: dict) -> list[dict]:
    cm, rm = _is_messages(row.get("chosen")), _is_messages(row.get("rejected"))
    if cm and rm:
        chosen = _with_system(row, _messages(row, "chosen"))
        rejected = _with_system(row, _messages(row, "rejected"))
        n = _common_prefix_len(chosen, rejected)
        if n == 0:
            raise RowError(
                "chosen",
                "'chosen' and 'rejected' share no prompt turns; without a 'prompt' field they must be two full "
                "conversations that begin with the same turns",
            )
        if n == len(chosen) or n == len(rejected):
            raise RowError("rejected", "'chosen' and 'rejected' must differ in their final assistant turns")
        for k, v in (("chosen", chosen[n:]), ("rejected", rejected[n:])):
            if v[-1]["role"] != "assistant":
                raise RowError(k, f"the last message of '{k}' must have role 'assistant'")
        return [_pair_out(chosen[:n], chosen[n:], rejected[n:])]
    if cm != rm:
        raise RowError("rejected" if cm else "chosen", "'chosen' and 'rejected' must both be text or both be message lists")
    chosen, rejected = _text(row, "chosen"), _text(row, "rejected")
    n = len(_common_prefix_str(chosen, rejected))
    return [_pair_out(chosen[:n], chosen[n:], rejected[n:])]


def _common_prefix_str(a: str, b: str) -> str:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    prefix = a[:n]
    if n < min(len(a), len(b)):  # don't split a word: back off to the last whitespace
        cut = max(prefix.rfind(" "), prefix.rfind("\n"))
        prefix = prefix[: cut + 1] if cut >= 0 else ""
    return prefix


def _query_messages(row: dict) -> list[dict]:
    return _with_system(row, [*_history(row), {"role": "user", "content": _text(row, "query")}])


def _conv_query_response_rejected(row: dict) -> list[dict]:
    prompt = _query_messages(row)
    return [_pair_out(
        prompt,
        [{"role": "assistant", "content": _text(row, "response")}],
        [{"role": "assistant", "content": _text(row, "rejected_response")}],
    )]


def _unpaired_out(prompt, completion, label: bool) -> dict:
    return {"prompt": prompt, "completion": completion, "label": label}


def _conv_messages_label(row: dict) -> list[dict]:
    msgs = _with_system(row, _messages(row, "messages"))
    prompt, reply = _split_final_assistant(msgs, "messages")
    return [_unpaired_out(prompt, [reply], _label(row))]


def _conv_prompt_completion_label(row: dict) -> list[dict]:
    conv = _is_messages(row.get("prompt")) or _is_messages(row.get("completion"))
    p = _messages(row, "prompt") if _is_messages(row.get("prompt")) else _text(row, "prompt", allow_empty=True)
    c = _messages(row, "completion") if _is_messages(row.get("completion")) else _text(row, "completion")
    label = _label(row)
    if conv:
        return [_unpaired_out(_with_system(row, _as_conv(p, "user")), _as_conv(c, "assistant"), label)]
    return [_unpaired_out(p, c, label)]


def _conv_query_response_label(row: dict) -> list[dict]:
    return [_unpaired_out(_query_messages(row), [{"role": "assistant", "content": _text(row, "response")}], _label(row))]


def _unpair(pair_convert: Callable[[dict], list[dict]]) -> Callable[[dict], list[dict]]:
    def convert(row: dict) -> list[dict]:
        out = []
        for p in pair_convert(row):
            out.append(_unpaired_out(p["prompt"], p["chosen"], True))
            out.append(_unpaired_out(p["prompt"], p["rejected"], False))
        return out

    return convert


def _prompt_out(prompt, row: dict, consumed: set[str], extra: dict | None = None) -> dict:
    out = {"prompt": prompt}
    for k, v in row.items():  # extra scalar columns go to reward functions (GRPO passes them as kwargs)
        if k in consumed or k in out or k in ("system", "history"):
            continue
        if isinstance(v, (str, int, float, bool)) and not isinstance(v, type(None)):
            out[k] = v
    if extra:
        out.update(extra)
    return out


def _conv_prompt_only_messages(row: dict) -> list[dict]:
    msgs = _with_system(row, _messages(row, "messages"))
    extra = None
    if msgs[-1]["role"] == "assistant":
        if len(msgs) < 2:
            raise RowError("messages", "'messages' holds only an assistant reply; a prompt needs a user turn")
        extra = {"solution": msgs[-1]["content"]} if isinstance(msgs[-1]["content"], str) and "solution" not in row else None
        msgs = msgs[:-1]
    if msgs[-1]["role"] not in ("user", "tool"):
        raise RowError("messages", f"'messages' must end with a user turn for a prompt, got role {msgs[-1]['role']!r}")
    return [_prompt_out(msgs, row, {"messages"}, extra)]


def _conv_prompt_only(row: dict) -> list[dict]:
    if _is_messages(row.get("prompt")):
        msgs = _with_system(row, _messages(row, "prompt"))
        if msgs[-1]["role"] == "assistant":
            raise RowError("prompt", "the last message of 'prompt' must be a user turn, not the assistant's reply")
        return [_prompt_out(msgs, row, {"prompt", "chosen", "rejected", "completion", "label"})]
    return [_prompt_out(_text(row, "prompt"), row, {"prompt", "chosen", "rejected", "completion", "label"})]


def _conv_prompt_only_query(row: dict) -> list[dict]:
    extra = {"solution": row["response"]} if isinstance(row.get("response"), str) and "solution" not in row else None
    return [_prompt_out(_query_messages(row), row, {"query", "response", "rejected_response", "label"}, extra)]


def _prompt_from(pair_convert: Callable[[dict], list[dict]]) -> Callable[[dict], list[dict]]:
    def convert(row: dict) -> list[dict]:
        return [{"prompt": pair_convert(row)[0]["prompt"]}]

    return convert


_EX_Q = "What is the capital of France?"
_EX_USER = {"role": "user", "content": _EX_Q}
_EX_GOOD = "The capital of France is Paris."
_EX_BAD = "I don't know."

PAIRED_FORMATS = [
    Format(
        "messages+rejected_response", "paired", ("messages", "rejected_response"),
        "ms-swift: 'messages' ends with the preferred assistant reply; 'rejected_response' is the dispreferred reply",
        {"messages": [_EX_USER, {"role": "assistant", "content": _EX_GOOD}], "rejected_response": _EX_BAD},
        _conv_messages_rejected_response, True,
    ),
    Format(
        "messages+rejected_messages", "paired", ("messages", "rejected_messages"),
        "two conversations that differ only in the final assistant reply",
        {"messages": [_EX_USER, {"role": "assistant", "content": _EX_GOOD}],
         "rejected_messages": [_EX_USER, {"role": "assistant", "content": _EX_BAD}]},
        _conv_messages_rejected_messages, True,
    ),
    Format(
        "prompt/chosen/rejected", "paired", ("prompt", "chosen", "rejected"),
        "TRL: text, or lists of {\"role\", \"content\"} messages",
        {"prompt": _EX_Q, "chosen": _EX_GOOD, "rejected": _EX_BAD},
        _conv_prompt_chosen_rejected,
    ),
    Format(
        "chosen/rejected", "paired", ("chosen", "rejected"),
        "TRL implicit prompt: two full conversations (or texts) that begin with the same prompt",
        {"chosen": [_EX_USER, {"role": "assistant", "content": _EX_GOOD}],
         "rejected": [_EX_USER, {"role": "assistant", "content": _EX_BAD}]},
        _conv_implicit_prompt,
    ),
    Format(
        "query/response/rejected_response", "paired", ("query", "response", "rejected_response"),
        "ms-swift (older): optional 'system' and 'history' ([[query, response], ...])",
        {"query": _EX_Q, "response": _EX_GOOD, "rejected_response": _EX_BAD},
        _conv_query_response_rejected, True,
    ),
]

UNPAIRED_FORMATS = [
    Format(
        "messages+label", "unpaired", ("messages", "label"),
        "ms-swift: 'messages' ends with the assistant reply; 'label' true (desirable) or false (undesirable)",
        {"messages": [_EX_USER, {"role": "assistant", "content": _EX_GOOD}], "label": True},
        _conv_messages_label, True,
    ),
    Format(
        "prompt/completion/label", "unpaired", ("prompt", "completion", "label"),
        "TRL: text or message lists; 'label' true (desirable) or false (undesirable)",
        {"prompt": _EX_Q, "completion": _EX_BAD, "label": False},
        _conv_prompt_completion_label,
    ),
    Format(
        "query/response/label", "unpaired", ("query", "response", "label"),
        "ms-swift (older): optional 'system' and 'history'",
        {"query": _EX_Q, "response": _EX_GOOD, "label": True},
        _conv_query_response_label, True,
    ),
] + [
    Format(f"{f.name} (unpaired)", "unpaired", f.required,
           f"any preference-pair format ({f.name}): each pair gives one desirable and one undesirable row",
           f.example, _unpair(f.convert), f.conversational)
    for f in PAIRED_FORMATS
]

PROMPT_FORMATS = [
    Format(
        "messages", "prompt", ("messages",),
        "ms-swift: a conversation ending with the user's turn (a final assistant turn is dropped and kept as "
        "'solution' for reward functions)",
        {"messages": [{"role": "system", "content": "Answer briefly."}, _EX_USER]},
        _conv_prompt_only_messages, True,
    ),
    Format(
        "prompt", "prompt", ("prompt",),
        "TRL: text, or a list of messages ending with the user's turn; other scalar columns go to reward functions",
        {"prompt": _EX_Q},
        _conv_prompt_only,
    ),
    Format(
        "query", "prompt", ("query",),
        "ms-swift (older): optional 'system' and 'history'",
        {"query": _EX_Q},
        _conv_prompt_only_query, True,
    ),
] + [
    Format(f"{f.name} (prompt only)", "prompt", f.required,
           f"any preference-pair format ({f.name}); the replies are ignored", f.example,
           _prompt_from(f.convert), f.conversational)
    for f in PAIRED_FORMATS if f.name not in ("query/response/rejected_response",)
]

FORMATS: dict[Kind, list[Format]] = {"paired": PAIRED_FORMATS, "unpaired": UNPAIRED_FORMATS, "prompt": PROMPT_FORMATS}

# Every field name some format knows, for "did you mean" hints.
KNOWN_FIELDS = sorted({k for fs in FORMATS.values() for f in fs for k in f.required} | {"system", "history", "margin", "tools"})


def formats_for(method: str) -> list[Format]:
    """The row formats a method accepts, in detection order.

    Raises:
        InvalidArgument: unknown method.
    """
    kind = METHOD_KIND.get(method)
    if kind is None:
        raise InvalidArgument(
            f"unknown rlhf_type {method!r}; choose one of {', '.join(METHOD_KIND)}",
            reason="BAD_RLHF_TYPE",
            field_violations=[("spec.rlhf_type", f"unknown method {method!r}")],
        )
    return FORMATS[kind]


# --------------------------------------------------------------------------- messages


def _example_json(d: dict) -> str:
    return json.dumps(d, ensure_ascii=False)


def describe_formats(method: str) -> str:
    """The accepted formats of a method, one per line with an example (for errors and --help)."""
    fmts = formats_for(method)
    seen_names = set()
    lines = []
    for f in fmts:
        if f.name.endswith("(unpaired)") or f.name.endswith("(prompt only)"):
            continue
        seen_names.add(f.name)
        lines.append(f"  - {' + '.join(f.required)}: {f.description}\n      e.g. {_example_json(f.example)}")
    kind = METHOD_KIND[method]
    if kind == "unpaired":
        lines.append("  - or any preference-pair format (prompt/chosen/rejected, messages + rejected_response, ...): "
                     "each pair gives one desirable and one undesirable row")
    elif kind == "prompt":
        lines.append("  - or any preference-pair format (prompt/chosen/rejected, ...): only the prompt is used")
    return "\n".join(lines)


def _hints(method: str, row: dict) -> list[str]:
    kind = METHOD_KIND[method]
    keys = set(row)
    hints = []
    title = METHOD_TITLE[method]
    if "messages" in keys and "rejected" in keys and "rejected_response" not in keys:
        hints.append("ms-swift's pair format names the dispreferred reply 'rejected_response', not 'rejected' "
                     "(or use prompt/chosen/rejected)")
    if "messages" in keys and "rejected_response" not in keys and "label" not in keys and "rejected" not in keys \
            and kind != "prompt":
        if kind == "paired":
            hints.append("this row looks like SFT data (a conversation with one reply); "
                         f"{title} needs a dispreferred reply too: add 'rejected_response' "
                         "(or train it with `swiftmesh sft`)")
        else:
            hints.append("this row has 'messages' but no 'label': add \"label\": true or false")
    if kind == "paired" and "label" in keys and ({"completion", "messages", "response"} & keys):
        hints.append("this row is unpaired data (one reply with a 'label'); train it with --rlhf_type kto, "
                     "or give pairs")
    if kind == "paired" and "prompt" in keys and not ({"chosen", "rejected"} & keys) and "label" not in keys:
        hints.append("this row has only a prompt; prompt-only data is for --rlhf_type ppo or grpo")
    if kind == "unpaired" and {"prompt", "completion"} <= keys and "label" not in keys:
        hints.append("KTO rows need 'label': true (desirable) or false (undesirable)")
    if "conversations" in keys:
        hints.append("ShareGPT 'conversations' rows: rename the field to 'messages' (ShareGPT 'from'/'value' "
                     "entries inside it are understood)")
    if "instruction" in keys or "output" in keys:
        hints.append("Alpaca rows (instruction/input/output) are SFT data; alignment needs the fields listed above")
    # misspellings
    for k in sorted(keys):
        if k in KNOWN_FIELDS:
            continue
        close = difflib.get_close_matches(k, KNOWN_FIELDS, n=1, cutoff=0.75)
        if close:
            hints.append(f"did you mean '{close[0]}' instead of '{k}'?")
    return hints


def _fields_of(row: dict) -> str:
    return ", ".join(f"'{k}'" for k in row) or "(none)"


def no_format_error(method: str, name: str, row_number: int, row: dict, *, field_prefix: str = "",
                    earlier_format: str | None = None) -> InvalidArgument:
    """The INVALID_ARGUMENT for a row that fits none of the method's formats."""
    title = METHOD_TITLE[method]
    kind = METHOD_KIND[method]
    hints = _hints(method, row)
    msg = (
        f"dataset {name!r}, row {row_number}: this row does not fit any {title} dataset format. "
        f"It has the fields {_fields_of(row)}.\n"
        f"{title} trains on {KIND_NEEDS[kind]}; each row needs one of these field sets:\n"
        f"{describe_formats(method)}"
    )
    if earlier_format:
        msg += f"\nThe rows before it were read as {earlier_format}."
    if hints:
        msg += "\nHint: " + "\nHint: ".join(hints)
    expected = " | ".join(" + ".join(f.required) for f in formats_for(method) if "(" not in f.name)
    return InvalidArgument(
        msg,
        reason="BAD_DATASET_ROW",
        field_violations=[(f"{field_prefix}{name}:{row_number}", f"fields {_fields_of(row)}; {title} expects {expected}")],
        metadata={"dataset": name, "row": str(row_number), "rlhf_type": method},
    )


def bad_value_error(method: str, name: str, row_number: int, fmt: Format, err: RowError, *,
                    field_prefix: str = "") -> InvalidArgument:
    title = METHOD_TITLE[method]
    msg = (
        f"dataset {name!r}, row {row_number}: {err.message}. "
        f"(The row was read as the {fmt.name} format: {fmt.description}; "
        f"e.g. {_example_json(fmt.example)})"
    )
    return InvalidArgument(
        msg,
        reason="BAD_DATASET_ROW",
        field_violations=[(f"{field_prefix}{name}:{row_number}.{err.field}", err.message)],
        metadata={"dataset": name, "row": str(row_number), "rlhf_type": method, "format": fmt.name},
    )


# --------------------------------------------------------------------------- conversion


@dataclass
class ConvertedFile:
    """The rows of one dataset converted to TRL's columns."""

    name: str
    rows: list[dict]
    # Format name -> number of source rows read with it.
    formats: dict[str, int] = field(default_factory=dict)
    style: Style | None = None
    # A source row of each style, for "mixed styles" messages.
    example_rows: dict[str, int] = field(default_factory=dict)


_MESSAGE_FIELDS = ("messages", "rejected_messages", "prompt", "chosen", "rejected", "completion", "conversations")


def _decode_json_cells(row: dict) -> dict:
    """CSV and some exports store message lists as JSON strings: decode those cells."""
    out = row
    for k in _MESSAGE_FIELDS:
        v = row.get(k)
        if isinstance(v, str) and v.lstrip().startswith("[{"):
            try:
                decoded = json.loads(v)
            except ValueError:
                continue
            if _is_messages(decoded):
                out = dict(out) if out is row else out
                out[k] = decoded
    return out


def _style_of(out: dict) -> Style:
    v = out.get("prompt")
    if isinstance(v, list):
        return "conversational"
    for k in ("chosen", "rejected", "completion"):
        if isinstance(out.get(k), list):
            return "conversational"
    return "standard"


def convert_records(
    records: Sequence[tuple[int, dict]],
    method: str,
    name: str,
    *,
    field_prefix: str = "",
) -> ConvertedFile:
    """Detect the format of every row and convert it to TRL's columns for ``method``.

    Raises:
        InvalidArgument: a row fits none of the method's formats, or one of its values is wrong
            (naming the row and field), or the file mixes plain-text and conversational rows.
    """
    fmts = formats_for(method)
    out = ConvertedFile(name=name, rows=[])
    for row_number, row in records:
        row = _decode_json_cells(row)
        fmt = next((f for f in fmts if f.matches(row)), None)
        if fmt is None:
            raise no_format_error(method, name, row_number, row, field_prefix=field_prefix,
                                  earlier_format=next(iter(out.formats), None))
        try:
            converted = fmt.convert(row)
        except RowError as e:
            raise bad_value_error(method, name, row_number, fmt, e, field_prefix=field_prefix) from None
        if method == "rm" and "margin" in row and row["margin"] is not None:
            try:
                margin = float(row["margin"])
            except (TypeError, ValueError):
                raise bad_value_error(method, name, row_number, fmt,
                                      RowError("margin", f"'margin' must be a number, got {row['margin']!r}"),
                                      field_prefix=field_prefix) from None
            for c in converted:
                c["margin"] = margin
        out.formats[fmt.name] = out.formats.get(fmt.name, 0) + 1
        for c in converted:
            st = _style_of(c)
            out.example_rows.setdefault(st, row_number)
            if out.style is None:
                out.style = st
            elif out.style != st:
                a, b = out.example_rows["standard"], out.example_rows["conversational"]
                raise InvalidArgument(
                    f"dataset {name!r} mixes plain-text rows (e.g. row {a}) and conversational rows "
                    f"(lists of messages, e.g. row {b}); make every row one or the other",
                    reason="MIXED_DATASET_STYLES",
                    field_violations=[(f"{field_prefix}{name}:{row_number}", "plain text and messages mixed")],
                )
            out.rows.append(c)
    return out


@dataclass
class AlignmentData:
    """Datasets converted for one alignment method, ready for TRL (``to_dataset``)."""

    method: str
    rows: list[dict]
    style: Style
    # Dataset name -> {format name: rows}.
    formats: dict[str, dict[str, int]]

    def __len__(self) -> int:
        return len(self.rows)

    def to_dataset(self):
        """A ``datasets.Dataset`` with TRL's columns.

        Raises:
            InvalidArgument: the extra columns disagree in type between rows.
        """
        import datasets

        rows = self.rows
        if self.method in ("ppo", "grpo"):
            # Keep only the extra columns every row has (Arrow needs one schema).
            common = set(rows[0])
            for r in rows[1:]:
                common &= set(r)
            rows = [{k: v for k, v in r.items() if k in common} for r in rows]
        if self.method == "rm" and any("margin" in r for r in rows) and not all("margin" in r for r in rows):
            rows = [{**r, "margin": r.get("margin", 0.0)} for r in rows]
        try:
            return datasets.Dataset.from_list(rows)
        except Exception as e:  # pyarrow type errors
            raise InvalidArgument(
                f"the {self.method} datasets could not be combined into one table: {e}",
                reason="BAD_DATASET_SCHEMA",
            ) from None

    def summary(self) -> str:
        parts = []
        for name, fm in self.formats.items():
            parts.append(f"{name}: " + ", ".join(f"{n} rows as {f}" for f, n in fm.items()))
        return f"{len(self.rows)} {self.style} rows for {self.method} ({'; '.join(parts)})"


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
    """Read one dataset source into ``{file: [(row number, record), ...]}`` (``#N`` sampled).

    File reading is the trainer's (:func:`swiftmesh.services.trainer.data.read_rows`): local
    ``.jsonl``/``.json``/``.csv``/``.parquet`` files, directories of them, ``datasets``'
    ``save_to_disk`` directories, and ``models/{name}`` datasets registered in the hub.

    Raises:
        InvalidArgument: bad ``#N``, missing path (reason ``DATASET_NOT_FOUND``), unreadable rows
            (the trainer's violations, naming file and row), a row that is not a JSON object.
        NotFound: a ``models/`` dataset the hub lacks.
    """
    from swiftmesh.services.trainer import data as tdata

    where = f"{field}[{idx}]"
    try:
        path_str, count = tdata.parse_source(spec)
    except ValueError as e:
        raise InvalidArgument(f"dataset {spec!r}: {e}", reason="BAD_DATASET_SPEC",
                              field_violations=[(where, str(e))]) from None
    if path_str.startswith("models/"):
        if models is None:
            raise InvalidArgument(f"dataset {path_str}: hub datasets need the hub", reason="BAD_DATASET_SPEC",
                                  field_violations=[(where, "no hub")])
        info = models.get(path_str)  # NotFound propagates
        if info.format != "dataset":
            raise InvalidArgument(f"{path_str} is a {info.format} model in the hub, not a dataset",
                                  reason="BAD_DATASET_SPEC", field_violations=[(where, "not a dataset")])
        path = Path(models.materialize(path_str))
    else:
        path = Path(path_str).expanduser()
        if not path.exists():
            raise InvalidArgument(f"dataset {path_str!r}: no such file or directory", reason="DATASET_NOT_FOUND",
                                  field_violations=[(where, f"{path_str}: no such file or directory")])
    errors: list = []
    raw = tdata.read_rows(path, path_str, idx, errors)
    if errors:
        tdata.raise_violations(errors, reason="BAD_DATASET_FILE")
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


def load_alignment_data(
    specs: Sequence[str],
    method: str,
    *,
    seed: int = 42,
    models=None,
    field: str = "spec.datasets",
) -> AlignmentData:
    """Read, sample (``#N``), validate and convert the datasets of an alignment job.

    Args:
        specs: dataset sources (see :func:`read_source`), each optionally with ``#N``.
        method: ``dpo``, ``kto``, ``orpo``, ``cpo``, ``simpo``, ``rm``, ``ppo`` or ``grpo``.
        seed: seed of the ``#N`` sampling (default 42).
        models: the model source, for ``models/{name}`` datasets in the hub.
        field: the request field the specs came from, for field violations.

    Raises:
        InvalidArgument: no datasets; a file is missing or unreadable; a row fits no format of
            ``method`` or has a bad value (the message names dataset, row, the fields expected and a
            hint); the datasets mix plain-text and conversational rows.
        NotFound: a hub dataset that does not exist.
    """
    formats_for(method)  # unknown method -> InvalidArgument
    if not specs:
        raise InvalidArgument(
            f"no dataset given; {METHOD_TITLE[method]} needs {KIND_NEEDS[METHOD_KIND[method]]}. Accepted formats:\n"
            + describe_formats(method),
            reason="NO_DATASET",
            field_violations=[(field, "at least one dataset is required")],
        )
    rows: list[dict] = []
    formats: dict[str, dict[str, int]] = {}
    style: Style | None = None
    style_source = ""
    for i, spec in enumerate(specs):
        files = read_source(spec, i, models=models, seed=seed, field=field)
        for name, records in files.items():
            try:
                conv = convert_records(records, method, name)
            except InvalidArgument as e:
                e.field_violations.insert(0, FieldViolation(f"{field}[{i}]", e.message.split("\n", 1)[0]))
                raise
            if style is None:
                style, style_source = conv.style, name
            elif conv.style != style:
                raise InvalidArgument(
                    f"dataset {name!r} is {conv.style} but {style_source!r} is {style}; "
                    "all datasets of a job must be plain text, or all conversational (lists of messages)",
                    reason="MIXED_DATASET_STYLES",
                    field_violations=[(f"{field}[{i}]", f"{conv.style} rows after {style} rows")],
                )
            rows.extend(conv.rows)
            formats[name] = conv.formats
    assert style is not None
    return AlignmentData(method=method, rows=rows, style=style, formats=formats)
