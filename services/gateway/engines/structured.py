"""Constrained decoding with xgrammar (https://xgrammar.mlc.ai), for engines that own their
decoding loop (transformers; vLLM and LmDeploy use their own xgrammar integration).

A :class:`GrammarBackend` per model compiles :class:`StructuredOutput` specs (cached) and
hands out matchers; a matcher fills its row of a token bitmask before sampling and accepts the
sampled token after it. ``json_object`` is compiled as the JSON schema ``{"type": "object"}``
(an object, as OpenAI's ``response_format`` requires); JSON is compact (no free whitespace) so a
model cannot pad its output with whitespace until ``max_tokens``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

import torch

from swiftmesh.runtime.errors import InvalidArgument

from .types import StructuredOutput


def _ebnf_literal(s: str) -> str:
    # xgrammar EBNF string literals take JSON-style escapes.
    return json.dumps(s, ensure_ascii=False)


class GrammarBackend:
    """Compiles grammars for one tokenizer and applies their masks to logits.

    Args:
        tokenizer: the Hugging Face tokenizer.
        vocab_size: width of the model's logits.
        stop_token_ids: tokens that end a finished grammar (EOS).
    """

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: Sequence[int]) -> None:
        import xgrammar as xgr

        self._xgr = xgr
        self.vocab_size = vocab_size
        self.info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size,
                                                       stop_token_ids=list(stop_token_ids) or None)
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=2, cache_enabled=True)
        self._cache: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def compile(self, spec: StructuredOutput) -> Any:
        """The compiled grammar of ``spec`` (cached). InvalidArgument for a schema, regex or choice
        xgrammar cannot compile, naming the field."""
        key = (spec.kind, json.dumps(spec.value, sort_keys=True))
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None:
            return hit
        field = f"sampling.structured_output.{spec.kind}"
        try:
            if spec.kind == "json_object":
                compiled = self.compiler.compile_json_schema('{"type": "object"}', any_whitespace=False)
            elif spec.kind == "json_schema":
                compiled = self.compiler.compile_json_schema(spec.value, any_whitespace=False)
            elif spec.kind == "regex":
                compiled = self.compiler.compile_regex(spec.value)
            elif spec.kind == "choice":
                rule = " | ".join(_ebnf_literal(c) for c in spec.value)
                compiled = self.compiler.compile_grammar(f"root ::= {rule}")
            else:
                raise InvalidArgument(f"unknown structured output kind {spec.kind!r}",
                                      field_violations=[("sampling.structured_output", "unknown kind")])
        except InvalidArgument:
            raise
        except Exception as e:  # noqa: BLE001 - xgrammar raises RuntimeError / ValueError with the reason
            raise InvalidArgument(f"{field}: cannot be compiled to a grammar: {e}", reason="INVALID_GRAMMAR",
                                  field_violations=[(field, str(e))]) from None
        with self._lock:
            self._cache[key] = compiled
        return compiled

    def matcher(self, compiled: Any) -> Any:
        return self._xgr.GrammarMatcher(compiled)

    def apply(self, matchers: Sequence[Any], rows: Sequence[int], logits: torch.Tensor) -> None:
        """Mask, in place, the tokens each matcher forbids in its row of ``logits`` ([B, V])."""
        xgr = self._xgr
        bitmask = xgr.allocate_token_bitmask(len(rows), self.info.vocab_size)
        for j, m in enumerate(matchers):
            m.fill_next_token_bitmask(bitmask, j)
        sub = logits[list(rows)]
        xgr.apply_token_bitmask_inplace(sub, bitmask.to(sub.device))
        logits[list(rows)] = sub
