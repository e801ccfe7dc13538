"""Prompt-only rows for PPO and GRPO: row formats -> TRL's ``prompt`` column
(https://huggingface.co/docs/trl/dataset_formats#prompt-only), plus the row's other scalar
columns, which GRPO passes to reward functions as keyword arguments.

Accepted: ``messages`` ending in a user turn (a final assistant turn is dropped and kept as
``solution``, as ms-swift does); ``prompt`` (text or messages); ``query`` (ms-swift, optional
``system``, ``history``; its ``response`` becomes ``solution``); ``instruction`` (+ ``input``,
Alpaca; its ``output`` becomes ``solution``); or the prompt of any preference-pair format
(its replies deliberately unused). The multimodal columns are carried.
"""

from __future__ import annotations

from collections.abc import Callable

from swiftmesh.jobkit.data.fields import (
    EX_QUESTION,
    EX_USER,
    Format,
    RowError,
    carried,
    instruction_prompt,
    is_messages,
    messages_value,
    query_prompt,
    text_value,
    with_system,
)
from swiftmesh.jobkit.data.preference import PAIRED_FORMATS


def _prompt_out(prompt, row: dict, consumed: set[str], extra: dict | None = None) -> dict:
    out = {"prompt": prompt}
    for k, v in row.items():  # extra scalar columns go to reward functions (GRPO passes them as kwargs)
        if k in consumed or k in out or k in ("system", "history"):
            continue
        if isinstance(v, (str, int, float, bool)):
            out[k] = v
    if extra:
        out.update(extra)
    out.update(carried(row))
    return out


def _conv_prompt_only_messages(row: dict) -> list[dict]:
    msgs = with_system(row, messages_value(row, "messages"))
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
    if is_messages(row.get("prompt")):
        msgs = with_system(row, messages_value(row, "prompt"))
        if msgs[-1]["role"] == "assistant":
            raise RowError("prompt", "the last message of 'prompt' must be a user turn, not the assistant's reply")
        return [_prompt_out(msgs, row, {"prompt", "chosen", "rejected", "completion", "label"})]
    return [_prompt_out(text_value(row, "prompt"), row, {"prompt", "chosen", "rejected", "completion", "label"})]


def _conv_prompt_only_query(row: dict) -> list[dict]:
    extra = {"solution": row["response"]} if isinstance(row.get("response"), str) and "solution" not in row else None
    return [_prompt_out(query_prompt(row), row, {"query", "response", "rejected_response", "label"}, extra)]


def _conv_prompt_only_instruction(row: dict) -> list[dict]:
    extra = {"solution": row["output"]} if isinstance(row.get("output"), str) and "solution" not in row else None
    return [_prompt_out(instruction_prompt(row), row, {"instruction", "input", "output", "label"}, extra)]


def _prompt_from(pair_convert: Callable[[dict], list[dict]]) -> Callable[[dict], list[dict]]:
    def convert(row: dict) -> list[dict]:
        pair = pair_convert(row)[0]
        return [{k: v for k, v in pair.items() if k not in ("chosen", "rejected")}]

    return convert


PROMPT_FORMATS = [
    Format(
        "messages", "prompt", ("messages",),
        "ms-swift: a conversation ending with the user's turn (a final assistant turn is dropped and kept as "
        "'solution' for reward functions)",
        {"messages": [{"role": "system", "content": "Answer briefly."}, EX_USER]},
        _conv_prompt_only_messages, ("system",), True,
    ),
    Format(
        "prompt", "prompt", ("prompt",),
        "TRL: text, or a list of messages ending with the user's turn; other scalar columns go to reward functions",
        {"prompt": EX_QUESTION},
        _conv_prompt_only, ("system", "chosen", "rejected", "completion", "label"), True,
    ),
    Format(
        "query", "prompt", ("query",),
        "ms-swift (older): optional 'system' and 'history'",
        {"query": EX_QUESTION},
        _conv_prompt_only_query, ("system", "history", "response", "rejected_response", "label"), True,
    ),
    Format(
        "instruction", "prompt", ("instruction",),
        "ms-swift Alpaca: 'instruction' (+ optional 'input', 'system', 'history'); 'output' becomes 'solution'",
        {"instruction": EX_QUESTION},
        _conv_prompt_only_instruction, ("input", "system", "history", "output", "label"), True,
    ),
] + [
    Format(f"{f.name} (prompt only)", "prompt", f.required,
           f"any preference-pair format ({f.name}); the replies are ignored", f.example,
           _prompt_from(f.convert), tuple(set(f.optional) | set(f.required)))
    for f in PAIRED_FORMATS if f.name not in ("query/response/rejected_response",)
]
