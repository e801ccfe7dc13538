"""Request bounds of the REST API (issue 14), all from :class:`~swiftmesh.runtime.config.GatewaySettings`.

* :class:`BodyLimit`: an ASGI middleware answering 413 (OpenAI error, ``code``
  ``request_too_large``, ``param`` null) once a request body passes ``max_request_body_bytes``
  (default 10 MiB): at once from ``Content-Length``, else while the (chunked) body is read, before
  any parsing.
* :class:`BodyLimit` also answers 408 (``code`` ``request_timeout``, ``Connection: close``) when
  the whole body has not arrived ``read_timeout`` s (``request_read_timeout_s``, default 30 s)
  after the request started, so a client announcing a large ``Content-Length`` and sending
  nothing cannot hold a connection.
* :func:`check_bounds`: 400 (``param`` naming the list) for more ``messages`` than
  ``max_messages``, more ``stop`` strings than ``max_stop`` (OpenAI: 4), more ``logit_bias``
  entries than ``max_logit_bias`` (OpenAI: 300), more choices (prompts x ``n``) than
  ``max_choices``, and more generated tokens (``max_tokens`` / ``max_completion_tokens``) than
  ``max_output_tokens`` (0: no cap here). ``max_tokens`` against the model's context length is
  checked once the model is resolved (``translate.check_limits``: the worker lists each model's
  ``max_model_len``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from swiftmesh.runtime.config import GatewaySettings

from .errors import APIError
from .protocol import ChatCompletionRequest, CompletionRequest, ParamError


class BodyLimit:
    """ASGI middleware: 413 for an HTTP request body over ``limit`` bytes, 408 for one not read
    whole within ``read_timeout`` seconds of the request's start."""

    def __init__(self, app: Any, limit: int, read_timeout: float = 30.0) -> None:
        self.app = app
        self.limit = limit
        self.read_timeout = read_timeout

    def _error(self) -> APIError:
        return APIError(413, f"Request body too large: the limit is {self.limit} bytes "
                        "(gateway.max_request_body_bytes).", code="request_too_large")

    def _timeout(self) -> APIError:
        return APIError(408, f"The request body did not arrive within {self.read_timeout:g} s "
                        "(gateway.request_read_timeout_s).", code="request_timeout",
                        headers={"connection": "close"})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                return await self._error().response()(scope, receive, send)
        seen = 0
        answered = False
        body_done = False
        deadline = time.monotonic() + self.read_timeout

        async def limited_receive():
            # Over the limit or too slow: answer now and tell the app the client left (FastAPI
            # would turn an exception raised here into its own 400), dropping what it answers after.
            nonlocal seen, answered, body_done
            if answered:
                return {"type": "http.disconnect"}
            if body_done:  # after the body: a disconnect, waited for as long as the answer runs
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.001))
            except TimeoutError:
                answered = True
                await self._timeout().response()(scope, receive, send)
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if seen > self.limit:
                    answered = True
                    await self._error().response()(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if not answered:
                await send(message)

        await self.app(scope, limited_receive, guarded_send)


def check_bounds(body: ChatCompletionRequest | CompletionRequest, limits: GatewaySettings) -> None:
    """Raise ParamError (HTTP 400, ``param`` set) when a list of ``body`` passes its bound."""
    def over(param: str, count: int, limit: int, what: str) -> None:
        if count > limit:
            raise ParamError(f"{param} has {count} {what}; at most {limit} are allowed", param,
                             code="too_many_items")

    if isinstance(body, ChatCompletionRequest):
        over("messages", len(body.messages), limits.max_messages, "messages")
        prompts = 1
    else:
        prompts = len(body.prompts())
    over("stop", len(body.stop_list()), limits.max_stop, "strings")
    over("logit_bias", len(body.logit_bias or {}), limits.max_logit_bias, "entries")
    over("n", prompts * (body.n or 1), limits.max_choices, "choices (prompts x n)")
    if isinstance(body, ChatCompletionRequest):
        asked, param = body.output_limit, "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    else:
        asked, param = body.max_tokens, "max_tokens"
    if limits.max_output_tokens and asked and asked > limits.max_output_tokens:
        raise ParamError(f"{param} is {asked}; at most {limits.max_output_tokens} tokens may be generated per "
                         "request (gateway.max_output_tokens)", param, code="above_max_value")
