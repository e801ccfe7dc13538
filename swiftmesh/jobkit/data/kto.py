"""Unpaired rows for KTO: row formats -> TRL's ``prompt``/``completion``/``label`` columns
(https://huggingface.co/docs/trl/dataset_formats#unpaired-preference).

Accepted: ``messages`` ending in the assistant reply + ``label`` (ms-swift); ``prompt``/
``completion``/``label`` (TRL; text or message lists); ``query``/``response``/``label``
and ``instruction``/``output``/``label`` (ms-swift, optional ``system``, ``history``, ``input``);
or any preference-pair format, each pair giving one desirable and one undesirable row.
"""

from __future__ import annotations

from collections.abc import Callable

from swiftmesh.jobkit.data.fields import (
    EX_BAD,
    EX_GOOD,
    EX_QUESTION,
    EX_USER,
    Format,
    as_conversation,
    carried,
    instruction_prompt,
    is_messages,
    label_value,
    messages_value,
    query_prompt,
    split_final_assistant,
    text_value,
    with_system,
)
from swiftmesh.jobkit.data.preference import PAIRED_FORMATS


def _unpaired_out(prompt, completion, label: bool, row: dict | None = None) -> dict:
    return {"prompt": prompt, "completion": completion, "label": label, **(carried(row) if row else {})}


def _conv_messages_label(row: dict) -> list[dict]:
    msgs = with_system(row, messages_value(row, "messages"))
    prompt, reply = split_final_assistant(msgs, "messages")
    return [_unpaired_out(prompt, [reply], label_value(row), row)]


def _conv_prompt_completion_label(row: dict) -> list[dict]:
    conv = is_messages(row.get("prompt")) or is_messages(row.get("completion"))
    p = messages_value(row, "prompt") if is_messages(row.get("prompt")) else text_value(row, "prompt", allow_empty=True)
    c = messages_value(row, "completion") if is_messages(row.get("completion")) else text_value(row, "completion")
    label = label_value(row)
    if conv:
        return [_unpaired_out(with_system(row, as_conversation(p, "user")), as_conversation(c, "assistant"), label, row)]
    return [_unpaired_out(p, c, label, row)]


def _conv_query_response_label(row: dict) -> list[dict]:
    return [_unpaired_out(query_prompt(row), [{"role": "assistant", "content": text_value(row, "response")}],
                          label_value(row), row)]


def _conv_instruction_output_label(row: dict) -> list[dict]:
    return [_unpaired_out(instruction_prompt(row), [{"role": "assistant", "content": text_value(row, "output")}],
                          label_value(row), row)]


def _unpair(pair_convert: Callable[[dict], list[dict]]) -> Callable[[dict], list[dict]]:
    def convert(row: dict) -> list[dict]:
        out = []
        for p in pair_convert(row):
            extra = {k: v for k, v in p.items() if k not in ("prompt", "chosen", "rejected")}
            out.append({**_unpaired_out(p["prompt"], p["chosen"], True), **extra})
            out.append({**_unpaired_out(p["prompt"], p["rejected"], False), **extra})
        return out

    return convert


UNPAIRED_FORMATS = [
    Format(
        "messages+label", "unpaired", ("messages", "label"),
        "ms-swift: 'messages' ends with the assistant reply; 'label' true (desirable) or false (undesirable)",
        {"messages": [EX_USER, {"role": "assistant", "content": EX_GOOD}], "label": True},
        _conv_messages_label, ("system",),
    ),
    Format(
        "prompt/completion/label", "unpaired", ("prompt", "completion", "label"),
        "TRL: text or message lists; 'label' true (desirable) or false (undesirable)",
        {"prompt": EX_QUESTION, "completion": EX_BAD, "label": False},
        _conv_prompt_completion_label,
    ),
    Format(
        "query/response/label", "unpaired", ("query", "response", "label"),
        "ms-swift (older): optional 'system' and 'history'",
        {"query": EX_QUESTION, "response": EX_GOOD, "label": True},
        _conv_query_response_label, ("system", "history"),
    ),
    Format(
        "instruction/output/label", "unpaired", ("instruction", "output", "label"),
        "ms-swift Alpaca: optional 'input', 'system' and 'history'",
        {"instruction": EX_QUESTION, "output": EX_GOOD, "label": True},
        _conv_instruction_output_label, ("input", "system", "history"),
    ),
] + [
    Format(f"{f.name} (unpaired)", "unpaired", f.required,
           f"any preference-pair format ({f.name}): each pair gives one desirable and one undesirable row",
           f.example, _unpair(f.convert), f.optional)
    for f in PAIRED_FORMATS
]
