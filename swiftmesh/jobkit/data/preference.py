"""Preference pairs for DPO, ORPO, CPO, SimPO and reward models: row formats -> TRL's
``prompt``/``chosen``/``rejected`` columns (https://huggingface.co/docs/trl/dataset_formats#preference).

Accepted (ms-swift's RLHF formats and TRL's): ``messages`` ending in the preferred reply +
``rejected_response``; ``messages`` + ``rejected_messages``; ``prompt``/``chosen``/``rejected``
(text, or message lists); ``instruction`` (+ ``input``) or ``query`` with ``chosen``/``rejected``
(ms-swift's Alpaca and query columns); ``instruction``/``output``/``rejected_response`` (Alpaca);
``query``/``response``/``rejected_response`` (optional ``system``, ``history``); and last
``chosen``/``rejected`` as two full conversations or texts (TRL's implicit prompt), so a row
with any prompt column is never read as one with an implicit (possibly empty) prompt.
Reward-model rows may add a numeric ``margin`` (:func:`reward_margin`).
"""

from __future__ import annotations

from swiftmesh.jobkit.data.fields import (
    EX_BAD,
    EX_GOOD,
    EX_QUESTION,
    EX_USER,
    Format,
    RowError,
    as_conversation,
    carried,
    instruction_prompt,
    is_messages,
    messages_value,
    query_prompt,
    split_final_assistant,
    text_value,
    with_system,
)


def _pair_out(prompt, chosen, rejected, row: dict | None = None) -> dict:
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **(carried(row) if row else {})}


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def _conv_instruction_chosen_rejected(row: dict) -> list[dict]:
    prompt = instruction_prompt(row) if "instruction" in row else query_prompt(row)
    return [_pair_out(prompt, _assistant(text_value(row, "chosen")), _assistant(text_value(row, "rejected")), row)]


def _conv_instruction_output_rejected(row: dict) -> list[dict]:
    return [_pair_out(instruction_prompt(row), _assistant(text_value(row, "output")),
                      _assistant(text_value(row, "rejected_response")), row)]


def _conv_messages_rejected_response(row: dict) -> list[dict]:
    msgs = with_system(row, messages_value(row, "messages"))
    prompt, chosen = split_final_assistant(msgs, "messages")
    rejected = text_value(row, "rejected_response")
    return [_pair_out(prompt, [chosen], _assistant(rejected), row)]


def _conv_messages_rejected_messages(row: dict) -> list[dict]:
    msgs = with_system(row, messages_value(row, "messages"))
    rej = with_system(row, messages_value(row, "rejected_messages"))
    prompt, chosen = split_final_assistant(msgs, "messages")
    rprompt, rejected = split_final_assistant(rej, "rejected_messages")
    if rprompt != prompt:
        raise RowError(
            "rejected_messages",
            "'rejected_messages' must repeat the turns of 'messages' and differ only in the final assistant reply",
        )
    return [_pair_out(prompt, [chosen], [rejected], row)]



def _conv_prompt_chosen_rejected(row: dict) -> list[dict]:
    vals = {}
    conv = any(is_messages(row.get(k)) for k in ("prompt", "chosen", "rejected"))
    for k in ("prompt", "chosen", "rejected"):
        vals[k] = messages_value(row, k) if is_messages(row.get(k)) else text_value(row, k, allow_empty=(k == "prompt"))
    if not conv:
        return [_pair_out(vals["prompt"], vals["chosen"], vals["rejected"], row)]
    prompt = with_system(row, as_conversation(vals["prompt"], "user"))
    chosen = as_conversation(vals["chosen"], "assistant")
    rejected = as_conversation(vals["rejected"], "assistant")
    for k, v in (("chosen", chosen), ("rejected", rejected)):
        if v[-1]["role"] != "assistant":
            raise RowError(k, f"the last message of '{k}' must have role 'assistant', got {v[-1]['role']!r}")
    return [_pair_out(prompt, chosen, rejected, row)]


def _conv_implicit_prompt(row: dict) -> list[dict]:
    cm, rm = is_messages(row.get("chosen")), is_messages(row.get("rejected"))
    if cm and rm:
        chosen = with_system(row, messages_value(row, "chosen"))
        rejected = with_system(row, messages_value(row, "rejected"))
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
        return [_pair_out(chosen[:n], chosen[n:], rejected[n:], row)]
    if cm != rm:
        raise RowError("rejected" if cm else "chosen", "'chosen' and 'rejected' must both be text or both be message lists")
    chosen, rejected = text_value(row, "chosen"), text_value(row, "rejected")
    n = len(_common_prefix_str(chosen, rejected))
    return [_pair_out(chosen[:n], chosen[n:], rejected[n:], row)]


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


def _conv_query_response_rejected(row: dict) -> list[dict]:
    return [_pair_out(query_prompt(row), _assistant(text_value(row, "response")),
                      _assistant(text_value(row, "rejected_response")), row)]


def _common_prefix_len(a: list, b: list) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


PAIRED_FORMATS = [
    Format(
        "messages+rejected_response", "paired", ("messages", "rejected_response"),
        "ms-swift: 'messages' ends with the preferred assistant reply; 'rejected_response' is the dispreferred reply",
        {"messages": [EX_USER, {"role": "assistant", "content": EX_GOOD}], "rejected_response": EX_BAD},
        _conv_messages_rejected_response, ("system",),
    ),
    Format(
        "messages+rejected_messages", "paired", ("messages", "rejected_messages"),
        "two conversations that differ only in the final assistant reply",
        {"messages": [EX_USER, {"role": "assistant", "content": EX_GOOD}],
         "rejected_messages": [EX_USER, {"role": "assistant", "content": EX_BAD}]},
        _conv_messages_rejected_messages, ("system",),
    ),
    Format(
        "prompt/chosen/rejected", "paired", ("prompt", "chosen", "rejected"),
        "TRL: text, or lists of {\"role\", \"content\"} messages",
        {"prompt": EX_QUESTION, "chosen": EX_GOOD, "rejected": EX_BAD},
        _conv_prompt_chosen_rejected,
    ),
    Format(
        "instruction/chosen/rejected", "paired", ("instruction", "chosen", "rejected"),
        "ms-swift Alpaca columns: 'instruction' (+ optional 'input', 'system', 'history') is the user's turn",
        {"instruction": EX_QUESTION, "chosen": EX_GOOD, "rejected": EX_BAD},
        _conv_instruction_chosen_rejected, ("input", "system", "history"),
    ),
    Format(
        "query/chosen/rejected", "paired", ("query", "chosen", "rejected"),
        "ms-swift query column: 'query' (+ optional 'system', 'history') is the user's turn",
        {"query": EX_QUESTION, "chosen": EX_GOOD, "rejected": EX_BAD},
        _conv_instruction_chosen_rejected, ("system", "history"),
    ),
    Format(
        "instruction/output/rejected_response", "paired", ("instruction", "output", "rejected_response"),
        "ms-swift Alpaca: 'output' is preferred, 'rejected_response' dispreferred (optional 'input', 'system', 'history')",
        {"instruction": EX_QUESTION, "output": EX_GOOD, "rejected_response": EX_BAD},
        _conv_instruction_output_rejected, ("input", "system", "history"),
    ),
    Format(
        "query/response/rejected_response", "paired", ("query", "response", "rejected_response"),
        "ms-swift (older): optional 'system' and 'history' ([[query, response], ...])",
        {"query": EX_QUESTION, "response": EX_GOOD, "rejected_response": EX_BAD},
        _conv_query_response_rejected, ("system", "history"),
    ),
    Format(
        "chosen/rejected", "paired", ("chosen", "rejected"),
        "TRL implicit prompt: two full conversations (or texts) that begin with the same prompt",
        {"chosen": [EX_USER, {"role": "assistant", "content": EX_GOOD}],
         "rejected": [EX_USER, {"role": "assistant", "content": EX_BAD}]},
        _conv_implicit_prompt,
    ),
]


def reward_margin(row: dict) -> float | None:
    """A reward-model row's optional ``margin`` (TRL's RewardTrainer column) as a float; None
    when absent or null.

    Raises:
        RowError: a margin that is not a number.
    """
    if row.get("margin") is None:
        return None
    try:
        return float(row["margin"])
    except (TypeError, ValueError):
        raise RowError("margin", f"'margin' must be a number, got {row['margin']!r}") from None
