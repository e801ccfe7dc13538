"""OpenAI's error envelope for every failure of the REST API.

Every non-2xx answer is ``{"error": {"message", "type", "param", "code"}}`` (OpenAI API
reference, "Error codes"), with the status code OpenAI uses:

=====  ==========================  =================================================
400    ``invalid_request_error``   invalid parameters (``param`` names the field), pydantic
                                   validation errors, malformed JSON, a model without a
                                   chat template
401    ``invalid_request_error``   missing (``code`` null) or wrong (``invalid_api_key``) API key
403    ``invalid_request_error``   an admin endpoint called with a non-admin key
404    ``invalid_request_error``   unknown model (``model_not_found``) or route
429    ``requests`` / ``tokens``   over a per-key rate limit (``rate_limit_exceeded``), with
                                   a ``Retry-After`` header (seconds)
503    ``server_error``            no healthy worker serves the model
=====  ==========================  =================================================

Domain errors (:mod:`swiftmesh.runtime.errors`, also those decoded from a worker's gRPC status)
map by their code: INVALID_ARGUMENT -> 400, NOT_FOUND -> 404, RESOURCE_EXHAUSTED -> 429,
UNAVAILABLE -> 503, and so on; a BadRequest field violation becomes ``param``.
"""

from __future__ import annotations

import json
import logging
import math
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from swiftmesh.runtime.errors import SwiftMeshError

from .protocol import ParamError

log = logging.getLogger("swiftmesh.gateway.api")

class SafeJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: error messages may quote client input that is not valid
    UTF-8 (lone surrogates are legal JSON escapes but cannot be encoded as UTF-8)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    499: "invalid_request_error",
}


class APIError(Exception):
    """An error answered in OpenAI's envelope.

    Args:
        status: HTTP status code.
        message: for people.
        type: OpenAI error type (default from the status: ``invalid_request_error`` for 4xx,
            ``server_error`` for 5xx).
        param: the request field at fault.
        code: machine-readable code (``model_not_found``, ``invalid_api_key``, ...).
        headers: extra response headers (``Retry-After`` ...).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The OpenAI error envelope ``{"error": {...}}``."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        """The JSON response (status, envelope, headers such as Retry-After)."""
        return SafeJSONResponse(self.body(), status_code=self.status, headers=self.headers)


def from_domain(err: SwiftMeshError) -> APIError:
    """The APIError for a domain error (router, keys, or a worker's status)."""
    status = err.http_status
    if status == 499:  # cancelled by the client: nobody reads it, but keep it a client error
        status = 400
    if err.code_name == "FAILED_PRECONDITION":
        status = 400
    param = err.field_violations[0].field if err.field_violations else err.metadata.get("param")
    code = err.metadata.get("openai_code") or (err.reason.lower() if err.reason != err.code_name else None)
    headers = {}
    if err.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(err.retry_after)))
    typ = err.metadata.get("openai_type")
    message = err.message
    if status >= 500 and status != 503 and not message:
        message = "internal error"
    return APIError(status, message, type=typ, param=param, code=code, headers=headers)


_TAG = re.compile(r"[\[\]\-,'<>]|^(str|int|float|bool|none|dict|list|literal)$")


def param_from_loc(loc: tuple[Any, ...]) -> str | None:
    """An OpenAI-style parameter path from a pydantic error location.

    ``("body", "messages", 0, "content")`` -> ``"messages[0].content"``. Union member tags that
    pydantic puts in locations (``"str"``, ``"list[int]"``, ``"NamedToolChoice"``,
    ``"function-after[...]"``) are dropped.
    """
    parts: list[str] = []
    for item in loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc:
        if isinstance(item, int):
            if parts:
                parts[-1] += f"[{item}]"
            continue
        item = str(item)
        if _TAG.search(item) or item[:1].isupper():
            continue
        parts.append(item)
    return ".".join(parts) or None


def _short(value: Any, limit: int = 80) -> str:
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_PYDANTIC_CODES = {
    "missing": "missing_required_parameter",
    "less_than_equal": "above_max_value",
    "less_than": "above_max_value",
    "greater_than_equal": "below_min_value",
    "greater_than": "below_min_value",
    "too_short": "too_short",
    "too_long": "too_long",
    "literal_error": "invalid_value",
    "json_invalid": "invalid_json",
}


def from_validation_error(exc: RequestValidationError) -> APIError:
    """One 400 for a pydantic validation failure: the first error, its parameter named."""
    errors = exc.errors()
    if not errors:
        return APIError(400, "invalid request")
    # Prefer our own ParamErrors (they carry the parameter and a precise message).
    first = errors[0]
    for e in errors:
        ctx_err = (e.get("ctx") or {}).get("error")
        if isinstance(ctx_err, ParamError):
            first = e
            break
    loc = tuple(first.get("loc") or ())
    param = param_from_loc(loc)
    ctx_err = (first.get("ctx") or {}).get("error")
    kind = first.get("type", "")
    if isinstance(ctx_err, ParamError):
        if ctx_err.param:
            param = ctx_err.param
        return APIError(400, ctx_err.message, param=param, code=ctx_err.code or "invalid_value")
    if kind == "json_invalid":
        detail = (first.get("ctx") or {}).get("error") or first.get("msg")
        return APIError(400, f"We could not parse the JSON body of your request ({detail}). The API expects a "
                             "JSON object.", code="invalid_json")
    if loc == ("body",) and kind == "missing":
        return APIError(400, "The request body is empty: expected a JSON object.", code="invalid_json")
    if loc == ("body",) and kind in ("model_attributes_type", "dict_type", "model_type"):
        return APIError(400, "The request body must be a JSON object (sent with Content-Type: application/json).",
                        code="invalid_json")
    msg = first.get("msg", "invalid value")
    if kind == "missing":
        message = f"Missing required parameter: '{param}'."
    else:
        got = f" (got {_short(first.get('input'))})" if "input" in first and kind != "missing" else ""
        message = f"Invalid value for '{param}': {msg}{got}." if param else f"{msg}{got}."
    others = {param_from_loc(tuple(e.get("loc") or ())) for e in errors} - {param}
    if others:
        message += f" (also invalid: {', '.join(sorted(str(o) for o in others))})"
    code = _PYDANTIC_CODES.get(kind, "invalid_type" if kind.endswith(("_type", "_parsing")) else "invalid_value")
    return APIError(400, message, param=param, code=code)


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error of ``app`` in OpenAI's envelope (validation, HTTP, domain, unexpected)."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return from_validation_error(exc).response()

    @app.exception_handler(ParamError)
    async def _param(request: Request, exc: ParamError) -> JSONResponse:
        return APIError(400, exc.message, param=exc.param, code=exc.code).response()

    @app.exception_handler(SwiftMeshError)
    async def _domain(request: Request, exc: SwiftMeshError) -> JSONResponse:
        return from_domain(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"Unknown request URL: {request.method} {request.url.path}."
            code = "unknown_url"
        elif exc.status_code == 405:
            message = f"Method {request.method} not allowed for {request.url.path}."
            code = "method_not_allowed"
        else:
            message, code = str(exc.detail), None
        return APIError(exc.status_code, message, code=code, headers=dict(exc.headers or {})).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return APIError(500, f"internal error: {type(exc).__name__}", type="server_error").response()
