"""Turning normalised rows into token ids and labels with the model's tokenizer.

Conversations are rendered by the tokenizer's own chat template (or the job's
``chat_template``). With ``assistant_only_loss`` the labels keep only the tokens of assistant
turns (their content and the template's end-of-turn marker); everything else is -100, the
index ``torch.nn.CrossEntropyLoss`` ignores. The assistant spans come from rendering the
conversation prefix by prefix: the text an assistant turn adds after the generation prompt
of the turns before it. Plain text (pre-training) gets the end-of-sequence token appended and
is trained on every token. Sequences are truncated to ``max_length`` tokens.
"""

from __future__ import annotations

from typing import Any

IGNORE_INDEX = -100


class EncodeError(ValueError):
    """A row could not be rendered or tokenized (the message says why)."""


def _render(tokenizer, messages, tools, add_generation_prompt: bool) -> str:
    kw: dict[str, Any] = {"tokenize": False, "add_generation_prompt": add_generation_prompt}
    if tools:
        kw["tools"] = tools
    out = tokenizer.apply_chat_template(messages, **kw)
    if not isinstance(out, str):
        raise EncodeError("the chat template did not render to text")
    return out


def _check_rendered(tokenizer, messages: list[dict], tools, full: str) -> None:
    """Nothing dropped by the template: tool schemas and tool calls must change the text."""
    if tools and _render(tokenizer, messages, None, False) == full:
        raise EncodeError("the chat template does not render 'tools' (the tool schemas would be dropped); "
                          "give a chat_template that renders tools, or put the schemas in the system message")
    if any(m.get("tool_calls") for m in messages):
        bare = [{k: v for k, v in m.items() if k != "tool_calls"} for m in messages]
        if _render(tokenizer, bare, tools, False) == full:
            raise EncodeError("the chat template does not render 'tool_calls' (the calls would be dropped); "
                              "give a chat_template that renders them, or write the call in the content")


def assistant_spans(tokenizer, messages: list[dict], tools=None) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns."""
    try:
        full = _render(tokenizer, messages, tools, False)
    except EncodeError:
        raise
    except Exception as e:  # noqa: BLE001  (jinja errors of the template)
        raise EncodeError(f"the chat template failed: {e}") from None
    _check_rendered(tokenizer, messages, tools, full)
    spans: list[tuple[int, int]] = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        try:
            upto = _render(tokenizer, messages[: i + 1], tools, False)
            prefix = _render(tokenizer, messages[:i], tools, True) if i else ""
        except Exception as e:  # noqa: BLE001
            raise EncodeError(f"the chat template failed on the first {i + 1} messages: {e}") from None
        if not full.startswith(upto):
            raise EncodeError("the chat template renders earlier turns differently once later ones are added; "
                              "set assistant_only_loss=false or give a chat_template")
        if not upto.startswith(prefix):
            try:
                prefix = _render(tokenizer, messages[:i], tools, False) if i else ""
            except Exception as e:  # noqa: BLE001
                raise EncodeError(f"the chat template failed: {e}") from None
            if not upto.startswith(prefix):
                raise EncodeError("cannot locate the assistant turn in the rendered conversation")
        spans.append((len(prefix), len(upto)))
    return full, spans


def encode_conversation(
    tokenizer, messages: list[dict], *, tools=None, max_length: int, assistant_only: bool = True
) -> dict[str, list[int]]:
    """``{"input_ids", "labels"}`` of a conversation (labels -100 outside assistant turns)."""
    text, spans = assistant_spans(tokenizer, messages, tools)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    if assistant_only:
        labels = [IGNORE_INDEX] * len(ids)
        for j, (start, end) in enumerate(enc["offset_mapping"]):
            if end <= start:
                continue
            for s, e in spans:
                if start < e and end > s:
                    labels[j] = ids[j]
                    break
    else:
        labels = list(ids)
    ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "labels": labels}


def encode_text(tokenizer, text: str, *, max_length: int) -> dict[str, list[int]]:
    """``{"input_ids", "labels"}`` of raw text (+ EOS), every token trained."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids.append(tokenizer.eos_token_id)
    ids = ids[:max_length]
    return {"input_ids": ids, "labels": list(ids)}


def encode_row(tokenizer, row: dict[str, Any], *, task: str, max_length: int, assistant_only: bool) -> dict[str, list[int]]:
    """Encode one normalised row for ``task`` ("sft" or "pt").

    Raises:
        EncodeError: the template cannot render the row or drops part of it (tools, tool
            calls), the row carries images/videos/audios (this encoder is text-only: the files
            would be dropped), or no assistant token is left within ``max_length``.
    """
    media = [k for k in ("images", "videos", "audios") if row.get(k)]
    if media:
        raise EncodeError(f"the row carries {', '.join(repr(k) for k in media)}, but this tokenizer-only encoder "
                          "trains text models: the files would be dropped (multimodal training is not supported yet)")
    if "text" in row:
        return encode_text(tokenizer, row["text"], max_length=max_length)
    if task == "pt":
        # Conversations as pre-training text: rendered by the template, every token trained.
        return encode_conversation(tokenizer, row["messages"], tools=row.get("tools"), max_length=max_length,
                                   assistant_only=False)
    out = encode_conversation(tokenizer, row["messages"], tools=row.get("tools"), max_length=max_length,
                              assistant_only=assistant_only)
    if all(label == IGNORE_INDEX for label in out["labels"]):
        raise EncodeError(f"no assistant token is left within max_length={max_length} tokens")
    return out


class Collator:
    """Pads a batch of ``{"input_ids", "labels"}`` to its longest sequence (right padding):
    ``input_ids`` with ``pad_token_id``, ``labels`` with -100, plus the ``attention_mask``."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad = pad_token_id

    def __call__(self, batch: list[dict[str, list[int]]]):
        import torch

        n = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), n), self.pad, dtype=torch.long)
        labels = torch.full((len(batch), n), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), n), dtype=torch.long)
        for i, b in enumerate(batch):
            k = len(b["input_ids"])
            ids[i, :k] = torch.tensor(b["input_ids"], dtype=torch.long)
            labels[i, :k] = torch.tensor(b["labels"], dtype=torch.long)
            mask[i, :k] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
