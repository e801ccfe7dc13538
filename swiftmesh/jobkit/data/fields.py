"""What every alignment dataset format shares: the methods and the data kind each trains on,
the row layout type (:class:`Format`), and the readers of row values (text, chat messages,
labels, ms-swift's ``system`` and ``history``).

The formats themselves live by method family: :mod:`.preference` (DPO, ORPO, CPO, SimPO,
reward models), :mod:`.kto` and :mod:`.prompts` (PPO, GRPO). Field names are ms-swift's
(https://swift.readthedocs.io/en/latest/Customization/Custom-dataset.html#rlhf) and TRL's
(https://huggingface.co/docs/trl/dataset_formats).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

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
# ms-swift's agent roles (https://swift.readthedocs.io/en/latest/Customization/Custom-dataset.html#agent):
# a ``tool_call`` turn is the assistant's (its JSON text is trained), a ``tool_response`` a tool's.
AGENT_ROLES = {"tool_call": "assistant", "tool_response": "tool"}
# Columns carried to the converted rows as they are (ms-swift's multimodal paths and grounding objects).
CARRIED = ("images", "videos", "audios", "objects")
_TRUE = {"true", "1", "yes", "y", "t", "desirable", "good", "chosen"}
_FALSE = {"false", "0", "no", "n", "f", "undesirable", "bad", "rejected"}


class RowError(ValueError):
    """A row fits a format's fields but a value is wrong (``field`` names it)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def text_value(row: dict, key: str, *, allow_empty: bool = False) -> str:
    """``row[key]`` as a string (numbers are converted).

    Raises:
        RowError: missing or null, not a string, or blank (unless ``allow_empty``).
    """
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


def is_messages(v: Any) -> bool:
    """Whether ``v`` looks like a chat: a non-empty list of objects."""
    return isinstance(v, list) and len(v) > 0 and all(isinstance(m, dict) for m in v)


def messages_value(row: dict, key: str) -> list[dict[str, Any]]:
    """``row[key]`` as ``[{"role", "content"}, ...]`` (a JSON string of one is decoded; ShareGPT
    ``from``/``value`` entries are converted; an assistant turn with only ``tool_calls`` gets
    empty content).

    Raises:
        RowError: not a list, empty, an entry that is not an object, an unknown role, or
            content that is neither a string nor a list of parts.
    """
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
            role = AGENT_ROLES.get(m.get("role"), m.get("role"))
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


def label_value(row: dict, key: str = "label") -> bool:
    """KTO's label: a bool, 1/0, or a word such as "true"/"false", "desirable"/"undesirable".

    Raises:
        RowError: anything else.
    """
    v = row.get(key)
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in _TRUE | _FALSE:
        return v.strip().lower() in _TRUE
    raise RowError(key, f"'{key}' must be true/false (or 1/0), got {v!r}")


def with_system(row: dict, messages: list[dict]) -> list[dict]:
    """``messages`` with ms-swift's ``system`` field as a first system turn (when it has none)."""
    system = row.get("system")
    if isinstance(system, str) and system.strip() and messages[0]["role"] != "system":
        return [{"role": "system", "content": system}, *messages]
    return messages


def history_messages(row: dict) -> list[dict]:
    """ms-swift's legacy ``history`` (``[[query, response], ...]``, or its JSON) as user/assistant turns.

    Raises:
        RowError: not a list of pairs of strings.
    """
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


def split_final_assistant(messages: list[dict], key: str) -> tuple[list[dict], dict]:
    """``(prompt turns, final assistant turn)`` of a conversation read from field ``key``.

    Raises:
        RowError: the last turn is not the assistant's, or there is nothing before it.
    """
    if messages[-1]["role"] != "assistant":
        raise RowError(
            key,
            f"the last message of '{key}' must be the assistant's reply (role 'assistant'), "
            f"got role {messages[-1]['role']!r}",
        )
    if len(messages) < 2:
        raise RowError(key, f"'{key}' has only the assistant's reply; it needs the prompt turns before it")
    reply = messages[-1]
    if isinstance(reply["content"], str) and not reply["content"].strip() and not reply.get("tool_calls"):
        raise RowError(key, f"the final assistant reply of '{key}' is empty")
    return messages[:-1], reply


@dataclass(frozen=True)
class Format:
    """One row layout: the fields that identify it, an example, and its converter."""

    name: str
    kind: Kind
    required: tuple[str, ...]
    description: str
    example: dict
    # One source row -> its rows in TRL's columns (KTO turns a pair into two); raises RowError.
    convert: Callable[[dict], list[dict]]
    # Other columns the converter reads (or, for prompt-only methods, deliberately leaves out);
    # any other column with content is an error (:func:`unused_columns`).
    optional: tuple[str, ...] = ("system",)
    # Prompt-only formats pass every other scalar column on (GRPO's reward function kwargs).
    passes_scalars: bool = False

    def uses(self) -> set[str]:
        """Every column this format reads."""
        return {*self.required, *self.optional}

    def matches(self, row: dict) -> bool:
        """Whether ``row`` has every ``required`` field, non-null."""
        return all(k in row and row[k] is not None for k in self.required)


def as_conversation(value: Any, role: str) -> list[dict]:
    """A message list as is; a text as one message of ``role``."""
    return value if isinstance(value, list) else [{"role": role, "content": value}]


def instruction_prompt(row: dict) -> list[dict]:
    """The prompt turns of an Alpaca-style row: ``system``, ``history``, then ``instruction``
    (and ``input`` on the next line when given), as ms-swift's AlpacaPreprocessor joins them.

    Raises:
        RowError: a bad ``instruction``, ``input`` or ``history``.
    """
    text = text_value(row, "instruction")
    if row.get("input") not in (None, ""):
        text = f"{text}\n{text_value(row, 'input')}"
    return with_system(row, [*history_messages(row), {"role": "user", "content": text}])


def carries_content(value: Any) -> bool:
    """Whether a column value holds something to train on: a non-blank string or a non-empty
    list/object (numbers, booleans, null and blanks are metadata)."""
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, (list, tuple, dict)):
        return len(value) > 0
    return False


def unused_columns(row: dict, used: set[str] | frozenset[str]) -> list[str]:
    """The columns of ``row`` that carry content (:func:`carries_content`) but are neither in
    ``used`` nor carried as they are (:data:`CARRIED`), in the row's order."""
    return [k for k, v in row.items() if k not in used and k not in CARRIED and carries_content(v)]


def carried(row: dict) -> dict:
    """The :data:`CARRIED` columns of ``row`` that have a value (multimodal paths, objects)."""
    return {k: row[k] for k in CARRIED if row.get(k) not in (None, "", [])}


def query_prompt(row: dict) -> list[dict]:
    """The prompt turns of ms-swift's ``query`` row: ``system``, ``history``, then ``query``.

    Raises:
        RowError: a bad ``query`` or ``history``.
    """
    return with_system(row, [*history_messages(row), {"role": "user", "content": text_value(row, "query")}])


# The example row of each format, in error messages and describe_formats.
EX_QUESTION = "What is the capital of France?"
EX_USER = {"role": "user", "content": EX_QUESTION}
EX_GOOD = "The capital of France is Paris."
EX_BAD = "I don't know."
