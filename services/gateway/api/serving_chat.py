"""``POST /v1/chat/completions`` (https://platform.openai.com/docs/api-reference/chat): the
worker renders the model's chat template; a forced ``tool_choice`` constrains the output to the
tool's arguments and the answer carries ``tool_calls``. The lifecycle is :mod:`.serving`'s."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from swiftmesh.clients.inference import GenerateRequest, ServedModel

from ..router import GenerationStream
from .metrics import RequestTimer
from .protocol import ChatCompletionRequest
from .serving import Collected, OpenAIServing
from .streaming import StreamState
from .translate import Choice, Usage, chat_generate_request, chat_logprobs, tool_calls, tool_schema


class OpenAIServingChat(OpenAIServing[ChatCompletionRequest]):
    """The chat completions endpoint."""

    operation = "chat"
    endpoint = "chat"
    id_prefix = "chatcmpl"
    chunk_object = "chat.completion.chunk"

    def build(self, req: ChatCompletionRequest, info: ServedModel, request_id: str) -> list[GenerateRequest]:
        """One engine request with the conversation (see :func:`.translate.chat_generate_request`)."""
        return [chat_generate_request(req, info, request_id)]

    def body(self, req: ChatCompletionRequest, results: list[Collected],
             request_id: str) -> tuple[dict[str, Any], Usage, list[str]]:
        """A ``chat.completion`` object."""
        (result,) = results
        mode, _ = tool_schema(req)
        k = req.top_logprobs or 0
        out_choices = []
        for index in range(req.n or 1):
            c = result.choices.get(index, Choice(finish_reason="abort"))
            text = "".join(c.text)
            message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
            finish = c.finish_reason or None
            if mode is not None:
                calls = tool_calls(mode, req, text)
                if calls is not None:
                    message["content"] = None
                    message["tool_calls"] = calls
                    if mode == "required" and finish == "stop":
                        finish = "tool_calls"
            out_choices.append({
                "index": index,
                "message": message,
                "logprobs": {"content": chat_logprobs(c.logprobs, k), "refusal": None} if req.logprobs else None,
                "finish_reason": finish,
            })
        body = {
            "id": request_id, "object": "chat.completion", "created": int(time.time()), "model": req.model,
            "choices": out_choices, "usage": result.usage.as_dict(), "system_fingerprint": None, "service_tier": None,
        }
        return body, result.usage, [c["finish_reason"] or "" for c in out_choices]

    async def events(self, req: ChatCompletionRequest, streams: list[GenerationStream], timer: RequestTimer,
                     state: StreamState) -> AsyncIterator[dict[str, Any]]:
        """``chat.completion.chunk`` objects: a role delta per choice, content (or tool-call
        argument) deltas, then a delta with the finish reason."""
        (stream,) = streams
        (usage,) = state.usages
        mode, _ = tool_schema(req)
        n = req.n or 1
        k = req.top_logprobs or 0
        want_logprobs = bool(req.logprobs)
        chunk = state.chunk
        buffered: dict[int, list[str]] = {}  # tool_choice "required": arguments are parsed at the end
        call_ids = {i: f"call_{uuid.uuid4().hex[:24]}" for i in range(n)} if mode else {}
        for i in range(n):
            delta: dict[str, Any] = {"role": "assistant", "content": "" if mode is None else None}
            if mode == "named":
                delta["tool_calls"] = [{"index": 0, "id": call_ids[i], "type": "function",
                                        "function": {"name": req.tool_choice.function.name, "arguments": ""}}]
            yield chunk([{"index": i, "delta": delta, "logprobs": None, "finish_reason": None}])
        async for msg in stream:
            usage.take(msg)
            for out in msg.outputs:
                ntok = len(out.token_ids)
                timer.generated(ntok)
                state.counts[out.index] = state.counts.get(out.index, 0) + ntok
                if out.text or (want_logprobs and out.logprobs):
                    if mode == "required":
                        buffered.setdefault(out.index, []).append(out.text)
                    else:
                        if mode == "named":
                            delta = {"tool_calls": [{"index": 0, "function": {"arguments": out.text}}]}
                        else:
                            delta = {"content": out.text}
                        yield chunk([{
                            "index": out.index, "delta": delta,
                            "logprobs": {"content": chat_logprobs(out.logprobs, k), "refusal": None}
                            if want_logprobs else None,
                            "finish_reason": None,
                        }])
                if out.finish_reason:
                    reason = out.finish_reason
                    if mode == "required":
                        text = "".join(buffered.pop(out.index, []))
                        calls = tool_calls(mode, req, text)
                        if calls is not None:
                            tc = [dict(c, index=j) for j, c in enumerate(calls)]
                            yield chunk([{"index": out.index, "delta": {"tool_calls": tc}, "logprobs": None,
                                          "finish_reason": None}])
                            if reason == "stop":
                                reason = "tool_calls"
                        else:
                            yield chunk([{"index": out.index, "delta": {"content": text}, "logprobs": None,
                                          "finish_reason": None}])
                    state.reasons[out.index] = reason
                    yield chunk([{"index": out.index, "delta": {}, "logprobs": None, "finish_reason": reason}])
