"""Engine-independent text processing shared by every engine.

* :class:`TokenizerBundle`: a model's tokenizer with its EOS ids, chat template rendering
  (clear ``InvalidArgument`` for a model without a chat template) and prompt tokenization.
* :class:`IncrementalDetokenizer`: token ids in, text deltas out, correct for multi-byte
  characters split across tokens and for tokenizers that strip leading spaces (the prefix-window
  method of vLLM's ``detokenize_incrementally`` and TGI).
* :class:`StopStringMatcher`: stop strings matched across token boundaries; text that could be
  the start of a stop string is held back until it is known not to be one.
* :class:`SequenceProcessor`: one choice of a token-level engine (transformers, LmDeploy):
  token ids (+ logprobs) in, :class:`CompletionDelta` out, with EOS / stop tokens / stop strings
  / max_tokens / context-length finishing and ``min_tokens``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from swiftmesh.runtime.errors import InvalidArgument

from ..messages import check_message
from .types import ChatPrompt, CompletionDelta, FinishReason, Prompt, TokenLogprob, TopLogprob

log = logging.getLogger("swiftmesh.engines")

REPLACEMENT_CHAR = "\ufffd"


class TokenizerBundle:
    """A Hugging Face tokenizer plus what the engines need from it.

    Args:
        tokenizer: a ``PreTrainedTokenizerBase``.
        eos_token_ids: ids that end generation (the tokenizer's EOS plus the model's
            ``generation_config.eos_token_id``).
        vocab_size: size of the model's output layer (may exceed ``len(tokenizer)``).
        max_model_len: context length, tokens.
    """

    def __init__(self, tokenizer: Any, eos_token_ids: Iterable[int], vocab_size: int, max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.eos_token_ids = sorted({int(i) for i in eos_token_ids if i is not None})
        self.vocab_size = int(vocab_size)
        self.max_model_len = int(max_model_len)
        self._token_text: dict[int, str] = {}

    # --- loading --------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, max_model_len: int = 0) -> TokenizerBundle:
        """Load the tokenizer, EOS ids, vocabulary size and context length of a model directory.

        ``max_model_len`` caps the context length (0: the model's ``max_position_embeddings``,
        else the tokenizer's ``model_max_length``, else 2048).
        """
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig

        path = str(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        config = AutoConfig.from_pretrained(path)
        text_config = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        eos: list[int] = []
        try:
            gen = GenerationConfig.from_pretrained(path)
            e = gen.eos_token_id
            eos += list(e) if isinstance(e, (list, tuple)) else ([e] if e is not None else [])
        except OSError:
            pass
        if tokenizer.eos_token_id is not None:
            eos.append(tokenizer.eos_token_id)
        e = getattr(text_config, "eos_token_id", None)
        eos += list(e) if isinstance(e, (list, tuple)) else ([e] if e is not None else [])
        vocab = int(getattr(text_config, "vocab_size", 0) or len(tokenizer))
        model_len = int(getattr(text_config, "max_position_embeddings", 0) or 0)
        if not model_len:
            tml = getattr(tokenizer, "model_max_length", 0) or 0
            model_len = int(tml) if 0 < tml < 10**7 else 2048
        if max_model_len:
            model_len = min(model_len, max_model_len)
        return cls(tokenizer, eos, vocab, model_len)

    # --- templates and tokenization --------------------------------------------------------
    @property
    def has_chat_template(self) -> bool:
        """Whether the tokenizer has a chat template."""
        return bool(getattr(self.tokenizer, "chat_template", None))

    def render_chat(self, chat: ChatPrompt, model: str = "") -> str:
        """The conversation rendered by the model's chat template, as text.

        Raises InvalidArgument (reason ``NO_CHAT_TEMPLATE``) for a model without a chat template,
        for messages the gateway's one validator (:func:`~..messages.check_message`) refuses,
        (reason ``CHAT_TEMPLATE_ERROR``) when the template rejects the conversation.
        """
        if not self.has_chat_template:
            raise InvalidArgument(
                f"model {model!r} has no chat template; use the completions API with a text prompt",
                reason="NO_CHAT_TEMPLATE",
                field_violations=[("messages", "the model has no chat template")],
            )
        if not chat.messages:
            raise InvalidArgument("messages must not be empty", field_violations=[("messages", "empty")])
        for i, m in enumerate(chat.messages):
            check_message(i, m.role, tool_calls=m.tool_calls, tool_call_id=m.tool_call_id)
        kwargs = dict(chat.chat_template_kwargs or {})
        try:
            text = self.tokenizer.apply_chat_template(
                [m.to_template_dict() for m in chat.messages],
                tools=chat.tools or None,
                add_generation_prompt=chat.add_generation_prompt,
                tokenize=False,
                **kwargs,
            )
        except Exception as e:  # noqa: BLE001 - jinja2 errors, raise_exception() in templates
            raise InvalidArgument(
                f"the chat template of {model!r} rejected the messages: {e}",
                reason="CHAT_TEMPLATE_ERROR",
                field_violations=[("messages", str(e))],
            ) from None
        if not isinstance(text, str):  # some versions return a list for batched input
            text = text[0]
        return text

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``."""
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of token ids."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens,
                                     clean_up_tokenization_spaces=False)

    def prompt_ids(self, prompt: Prompt, add_special_tokens: bool = True, model: str = "") -> tuple[list[int], str]:
        """Token ids and text of a prompt (text, token ids, or chat). Raises InvalidArgument for
        an empty prompt or token ids outside the vocabulary."""
        if isinstance(prompt, ChatPrompt):
            text = self.render_chat(prompt, model)
            ids = self.encode(text, add_special_tokens=False)
        elif isinstance(prompt, str):
            text = prompt
            ids = self.encode(text, add_special_tokens=add_special_tokens)
        else:
            ids = [int(i) for i in prompt]
            bad = [i for i in ids if not 0 <= i < self.vocab_size]
            if bad:
                raise InvalidArgument(
                    f"prompt token ids out of range [0, {self.vocab_size}): {bad[:5]}",
                    field_violations=[("prompt", f"token ids out of range: {bad[:5]}")],
                )
            text = self.decode(ids, skip_special_tokens=False)
        if not ids:
            raise InvalidArgument("the prompt is empty", field_violations=[("prompt", "empty after tokenization")])
        return ids, text

    def token_text(self, token_id: int) -> str:
        """The text of one token, as logprobs report it (``tokenizer.decode([id])``, cached)."""
        t = self._token_text.get(token_id)
        if t is None:
            t = self.tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            self._token_text[token_id] = t
        return t

    def logprob_entry(self, token_id: int, logprob: float | None, top: Sequence[tuple[int, float]] = ()) -> TokenLogprob:
        """A :class:`TokenLogprob` for ``token_id`` with its text and the ``top`` (id, logprob) alternatives."""
        return TokenLogprob(
            token_id=token_id,
            token=self.token_text(token_id),
            logprob=logprob,
            top_logprobs=[TopLogprob(t, self.token_text(t), lp) for t, lp in top],
        )


class IncrementalDetokenizer:
    """Text deltas from a growing list of token ids.

    Keeps a window of the last few ids (``prefix_offset:read_offset``) decoded as context, so a
    token's text is the difference between decoding the window with and without it. A delta
    ending in U+FFFD (an incomplete UTF-8 sequence) is held until the character completes.

    Args:
        bundle: the model's tokenizer.
        prompt_ids: the prompt, whose last ids prime the window (spacing of the first token).
        skip_special_tokens: leave special tokens out of the text.
    """

    CONTEXT = 5

    def __init__(self, bundle: TokenizerBundle, prompt_ids: Sequence[int], skip_special_tokens: bool = True) -> None:
        self.bundle = bundle
        self.skip = skip_special_tokens
        self.ids: list[int] = list(prompt_ids[-self.CONTEXT:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)

    def _decode(self, ids: Sequence[int]) -> str:
        return self.bundle.decode(ids, skip_special_tokens=self.skip)

    def add(self, token_id: int) -> str:
        """Append one token; returns the new text (possibly "")."""
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        if len(full) > len(prefix) and not full.endswith(REPLACEMENT_CHAR):
            delta = full[len(prefix):]
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            if self.prefix_offset > 64:  # keep the list short
                cut = self.prefix_offset
                self.ids = self.ids[cut:]
                self.prefix_offset -= cut
                self.read_offset -= cut
            return delta
        return ""

    def flush(self) -> str:
        """Text still held back (an incomplete character at the end), at the end of the sequence."""
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        self.prefix_offset = self.read_offset = len(self.ids)
        return full[len(prefix):] if len(full) > len(prefix) else ""


class StopStringMatcher:
    """Finds stop strings in text that arrives in pieces.

    ``feed(piece)`` returns ``(text_to_emit, stop)``: ``stop`` is the stop string found (the
    text is cut before it) or None; text that could be the beginning of a stop string is held
    back and returned by a later ``feed`` or by ``flush``.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.max_len = max((len(s) for s in self.stops), default=0)
        self.pending = ""

    def feed(self, piece: str, check: bool = True) -> tuple[str, str | None]:
        """Add text; with ``check`` False (before min_tokens) stop strings are not matched."""
        if not self.stops:
            return piece, None
        old = len(self.pending)
        self.pending += piece
        if check:
            start = max(0, old - self.max_len + 1)
            best: tuple[int, str] | None = None
            for s in self.stops:
                i = self.pending.find(s, start)
                if i >= 0 and (best is None or i < best[0]):
                    best = (i, s)
            if best is not None:
                out = self.pending[:best[0]]
                self.pending = ""
                return out, best[1]
        hold = self._held_length()
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, None

    def _held_length(self) -> int:
        text = self.pending
        for k in range(min(self.max_len - 1, len(text)), 0, -1):
            tail = text[-k:]
            if any(s.startswith(tail) for s in self.stops):
                return k
        return 0

    def flush(self) -> str:
        """The text held back (the stream ended without a stop string)."""
        out, self.pending = self.pending, ""
        return out


class SequenceProcessor:
    """Turns the sampled tokens of one choice into :class:`CompletionDelta` pieces.

    Args:
        bundle: the model's tokenizer.
        index: the choice index.
        prompt_ids: the prompt token ids.
        max_tokens: most new tokens (already resolved against the context length).
        stop: stop strings; stop_token_ids: extra stop tokens; ignore_eos: EOS does not stop;
        min_tokens: nothing stops the choice before this many tokens;
        skip_special_tokens: as in the detokenizer; logprobs: top alternatives to report (None: off).
    """

    def __init__(
        self,
        bundle: TokenizerBundle,
        index: int,
        prompt_ids: Sequence[int],
        max_tokens: int,
        stop: Sequence[str] = (),
        stop_token_ids: Sequence[int] = (),
        ignore_eos: bool = False,
        min_tokens: int = 0,
        skip_special_tokens: bool = True,
        logprobs: int | None = None,
    ) -> None:
        self.bundle = bundle
        self.index = index
        self.max_tokens = max_tokens
        self.min_tokens = min_tokens
        self.eos = set() if ignore_eos else set(bundle.eos_token_ids)
        self.stop_ids = set(stop_token_ids)
        self.logprobs = logprobs
        self.detok = IncrementalDetokenizer(bundle, prompt_ids, skip_special_tokens)
        self.stops = StopStringMatcher(stop)
        self.output_ids: list[int] = []
        self.finish_reason: FinishReason | None = None
        self.stop_reason = ""
        self.text = ""
        self._delta = CompletionDelta(index=index, logprobs=[] if logprobs is not None else None)
        self._final_sent = False

    @property
    def finished(self) -> bool:
        """Whether the choice has finished."""
        return self.finish_reason is not None

    @property
    def num_tokens(self) -> int:
        """Tokens generated so far."""
        return len(self.output_ids)

    def _emit_text(self, s: str) -> None:
        if s:
            self._delta.text += s
            self.text += s

    def add_token(
        self,
        token_id: int,
        logprob: float | None = None,
        top: Sequence[tuple[int, float]] = (),
    ) -> bool:
        """Add a sampled token; returns True when this choice has now finished."""
        if self.finished:
            return True
        self.output_ids.append(token_id)
        self._delta.token_ids.append(token_id)
        if self._delta.logprobs is not None:
            self._delta.logprobs.append(self.bundle.logprob_entry(token_id, logprob, top))
        can_stop = self.num_tokens >= self.min_tokens
        if can_stop and (token_id in self.eos or token_id in self.stop_ids):
            self.finish("stop", "" if token_id in self.eos else str(token_id))
            return True
        piece = self.detok.add(token_id)
        text, stop = self.stops.feed(piece, check=can_stop)
        self._emit_text(text)
        if stop is not None:
            self.finish_reason = "stop"
            self.stop_reason = stop
            return True
        if self.num_tokens >= self.max_tokens:
            self.finish("length")
            return True
        return False

    def finish(self, reason: FinishReason, stop_reason: str = "") -> None:
        """End the choice from outside (grammar done, context full, abort), flushing held text."""
        if self.finished:
            return
        if reason != "abort":
            tail = self.detok.flush()
            text, stop = self.stops.feed(tail, check=self.num_tokens >= self.min_tokens)
            self._emit_text(text)
            if stop is not None:
                reason, stop_reason = "stop", stop
            else:
                self._emit_text(self.stops.flush())
        self.finish_reason = reason
        self.stop_reason = stop_reason

    def take_delta(self) -> CompletionDelta | None:
        """The output since the last call (None when there is nothing new). The delta that
        carries ``finish_reason`` is the last one this choice returns."""
        if self._final_sent:
            return None
        d = self._delta
        if self.finish_reason is not None:
            d.finish_reason = self.finish_reason
            d.stop_reason = self.stop_reason
            self._final_sent = True
        elif not d.token_ids and not d.text:
            return None
        self._delta = CompletionDelta(index=self.index, logprobs=[] if self.logprobs is not None else None)
        return d


def parse_json_list(raw: str, field: str) -> list | None:
    """A JSON list from a proto string field ("" -> None). InvalidArgument naming ``field`` otherwise."""
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError as e:
        raise InvalidArgument(f"{field}: not valid JSON: {e}", field_violations=[(field, str(e))]) from None
    if not isinstance(value, list):
        raise InvalidArgument(f"{field}: must be a JSON list", field_violations=[(field, "must be a JSON list")])
    return value


def parse_json_object(raw: str, field: str) -> dict:
    """A JSON object from a proto string field ("" -> {}). InvalidArgument naming ``field`` otherwise."""
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as e:
        raise InvalidArgument(f"{field}: not valid JSON: {e}", field_violations=[(field, str(e))]) from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{field}: must be a JSON object", field_violations=[(field, "must be a JSON object")])
    return value
