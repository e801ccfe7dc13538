"""``POST /v1/completions`` (https://platform.openai.com/docs/api-reference/completions): one
engine request per prompt (text or token ids), ``n`` choices each, with ``echo`` and legacy
``logprobs``. The lifecycle is :mod:`.serving`'s."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from swiftmesh.clients.inference import GenerateRequest, GenerateResponse, ServedModel

from ..router import GenerationStream
from .metrics import RequestTimer
from .protocol import CompletionRequest
from .serving import Collected, OpenAIServing
from .streaming import StreamState, merge
from .translate import Choice, CompletionLogprobs, Usage, completion_generate_requests


class OpenAIServingCompletion(OpenAIServing[CompletionRequest]):
    """The (legacy) text completions endpoint."""

    operation = "text_completion"
    endpoint = "completions"
    id_prefix = "cmpl"
    chunk_object = "text_completion"

    def build(self, req: CompletionRequest, info: ServedModel, request_id: str) -> list[GenerateRequest]:
        """One engine request per prompt (see :func:`.translate.completion_generate_requests`)."""
        return completion_generate_requests(req, info, request_id)

    @staticmethod
    def _choice(req: CompletionRequest, index: int, c: Choice, first: GenerateResponse | None) -> dict[str, Any]:
        k = req.logprobs or 0
        text = "".join(c.text)
        prefix = ""
        lp = CompletionLogprobs(k) if req.logprobs is not None else None
        if req.echo and first is not None:
            prefix = first.prompt_text
            if lp is not None and first.prompt_logprobs:
                lp.add(first.prompt_logprobs, first_is_prompt_start=True)
        if req.max_tokens == 0:  # score only: the one generated token is dropped
            text, finish = "", "length"
        else:
            finish = c.finish_reason or None
            if lp is not None:
                lp.add(c.logprobs)
        return {"index": index, "text": prefix + text, "logprobs": lp.as_dict() if lp is not None else None,
                "finish_reason": finish}

    def body(self, req: CompletionRequest, results: list[Collected],
             request_id: str) -> tuple[dict[str, Any], Usage, list[str]]:
        """A ``text_completion`` object; choice ``p * n + i`` is choice ``i`` of prompt ``p``."""
        n = req.n or 1
        choices_out = []
        total = Usage()
        reasons: list[str] = []
        for p, result in enumerate(results):
            total.prompt += result.usage.prompt
            total.completion += 0 if req.max_tokens == 0 else result.usage.completion
            for i in range(n):
                c = result.choices.get(i, Choice(finish_reason="abort"))
                choice = self._choice(req, p * n + i, c, result.first)
                reasons.append(choice["finish_reason"] or "")
                choices_out.append(choice)
        body = {"id": request_id, "object": "text_completion", "created": int(time.time()), "model": req.model,
                "choices": choices_out, "usage": total.as_dict(), "system_fingerprint": None}
        return body, total, reasons

    async def events(self, req: CompletionRequest, streams: list[GenerationStream], timer: RequestTimer,
                     state: StreamState) -> AsyncIterator[dict[str, Any]]:
        """``text_completion`` objects with text (and logprobs) deltas, the echoed prompt first."""
        n = req.n or 1
        k = req.logprobs or 0
        want_logprobs = req.logprobs is not None
        offsets: dict[int, CompletionLogprobs] = {}
        echoed: set[int] = set()
        async for p, msg in merge(streams):
            state.usages[p].take(msg)
            prefix_text = ""
            prefix_lp: list = []
            if req.echo and msg.prompt_text:
                prefix_text = msg.prompt_text
                prefix_lp = list(msg.prompt_logprobs)
            for out in msg.outputs:
                index = p * n + out.index
                ntok = len(out.token_ids)
                timer.generated(ntok)
                state.counts[index] = state.counts.get(index, 0) + ntok
                lp = offsets.get(index)
                if lp is None and want_logprobs:
                    lp = offsets[index] = CompletionLogprobs(k)
                text = out.text
                lp_delta: dict[str, Any] | None = None
                if req.echo and index not in echoed:
                    echoed.add(index)
                    if not prefix_text:
                        prefix_text = msg.prompt_text
                    text = prefix_text + text
                    if lp is not None and prefix_lp:
                        lp_delta = lp.add(prefix_lp, first_is_prompt_start=True)
                if lp is not None:
                    d = lp.add(out.logprobs)
                    if lp_delta is None:
                        lp_delta = d
                    else:
                        for key in lp_delta:
                            lp_delta[key] += d[key]
                if text or out.finish_reason or (lp_delta and lp_delta["tokens"]):
                    reason = out.finish_reason or None
                    if reason:
                        state.reasons[index] = reason
                    yield state.chunk([{"index": index, "text": text, "logprobs": lp_delta, "finish_reason": reason}])
