"""The FastAPI application of the gateway: the OpenAI-compatible routes, health, metrics and
the admin endpoints.

Routes (OpenAI API reference, https://platform.openai.com/docs/api-reference):

* ``GET /v1/models``, ``GET /v1/models/{model}``: models served by healthy workers; adapters
  carry their base model in ``parent``.
* ``POST /v1/chat/completions``, ``POST /v1/completions``: :mod:`.serving_chat` and
  :mod:`.serving_completions`, sharing the lifecycle of :mod:`.serving`.
* ``GET /health``: 200 ``{"status": "ok", "workers": {...}}`` while the process runs.
* ``GET /metrics``: Prometheus text format (:mod:`.metrics`, worker gauges in ``workers``).
* ``GET /openapi.json``: the schema of the OpenAI-compatible routes (admin routes are left out).
* Admin (an admin key or the service token when the gateway is secured, see :mod:`.auth`):
  ``GET /v1/admin/workers``, ``POST /v1/admin/workers`` ``{"address": "host:port"}``,
  ``DELETE /v1/admin/workers/{worker}``, ``POST /v1/admin/adapters`` (body
  :class:`~.protocol.LoadAdapterBody`), ``DELETE /v1/admin/adapters/{served_name}``.

Every error is answered in OpenAI's envelope (:mod:`.errors`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import Body, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from swiftmesh.runtime.config import GatewaySettings

from ..keys import ApiKeyStore
from ..ratelimit import RateLimiter
from ..router import WorkerPool
from ..workers import Worker
from .auth import Authenticator, Principal
from .bounds import BodyLimit, check_bounds
from .errors import install_error_handlers
from .protocol import (
    AdapterLoadResult,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    LoadAdapterBody,
    ModelCard,
    ModelList,
)
from .serving import RequestContext
from .serving_chat import OpenAIServingChat
from .serving_completions import OpenAIServingCompletion
from .serving_models import OpenAIServingModels, model_card

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid request; `error.param` names the parameter."},
    401: {"model": ErrorResponse, "description": "Missing or invalid API key."},
    404: {"model": ErrorResponse, "description": "Unknown model."},
    429: {"model": ErrorResponse, "description": "Over the key's rate limit; see the Retry-After header."},
    503: {"model": ErrorResponse, "description": "No healthy worker serves the model."},
}


def _worker_json(w: Worker) -> dict[str, Any]:
    return {
        "name": w.name, "address": w.address, "healthy": w.healthy, "engine": w.engine, "device": w.device,
        "models": sorted(w.models), "running": w.running, "waiting": w.waiting, "inflight": w.inflight,
        "kv_cache_usage": w.kv_cache_usage, "last_seen": w.last_seen or None, "last_error": w.last_error or None,
    }


def _drop_422(app: FastAPI) -> None:
    """FastAPI documents validation errors as 422 with its own schema; ours are 400 in OpenAI's
    envelope, so the generated schema says so instead."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        for path in schema.get("paths", {}).values():
            for op in path.values():
                if isinstance(op, dict):
                    op.get("responses", {}).pop("422", None)
        comps = schema.get("components", {}).get("schemas", {})
        comps.pop("HTTPValidationError", None)
        comps.pop("ValidationError", None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(pool: WorkerPool, keys: ApiKeyStore, limiter: RateLimiter, auth: Authenticator,
               *, title: str = "SwiftMesh gateway", version: str = "0.1.0",
               limits: GatewaySettings | None = None) -> FastAPI:
    """The REST application over a worker pool and a key store (the pool is started and
    stopped by the caller, see ``services.gateway.server``); ``limits``: the request bounds of
    :mod:`.bounds` (default: GatewaySettings' defaults)."""
    limits = limits or GatewaySettings()
    app = FastAPI(
        title=title,
        version=version,
        description="OpenAI-compatible REST API of SwiftMesh (chat and text completions, models).",
    )
    install_error_handlers(app)
    app.add_middleware(BodyLimit, limit=limits.max_request_body_bytes, read_timeout=limits.request_read_timeout_s)
    chat = OpenAIServingChat(pool)
    completion = OpenAIServingCompletion(pool)
    models = OpenAIServingModels(pool)
    app.state.pool = pool
    app.state.keys = keys

    def caller(request: Request) -> Principal:
        return auth.principal(request)

    def admin(request: Request) -> Principal:
        return auth.admin(request)

    # ------------------------------------------------------------------ plumbing
    @app.get("/health", tags=["ops"])
    async def health() -> dict[str, Any]:
        """Liveness: 200 while the process serves HTTP, with the number of workers in rotation."""
        workers = pool.workers()
        return {"status": "ok", "workers": {"total": len(workers), "healthy": sum(w.healthy for w in workers)}}

    @app.get("/metrics", response_class=PlainTextResponse, tags=["ops"])
    async def metrics() -> Response:
        """Prometheus metrics (text exposition format)."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    # --------------------------------------------------------------------- models
    @app.get("/v1/models", response_model=ModelList, responses={401: _ERRORS[401]}, tags=["models"])
    async def list_models(principal: Principal = Depends(caller)) -> ModelList:  # noqa: B008
        """Lists the models served now (base models and adapters; an adapter's base is ``parent``)."""
        return models.list()

    @app.get("/v1/models/{model:path}", response_model=ModelCard, responses={401: _ERRORS[401], 404: _ERRORS[404]},
             tags=["models"])
    async def get_model(model: str, principal: Principal = Depends(caller)) -> ModelCard:  # noqa: B008
        """Retrieves one served model; 404 ``model_not_found`` if no healthy worker serves it."""
        return models.get(model)

    # ---------------------------------------------------------------- generation
    async def context(request: Request, principal: Principal) -> RequestContext:
        start = time.perf_counter()
        # A network limits storage (Redis) is called off the event loop, so a slow one delays
        # only the requests it admits, not every stream this gateway serves.
        headers = await asyncio.to_thread(auth.admit, principal) if limiter.remote else auth.admit(principal)
        return RequestContext(request=request, on_usage=auth.usage_recorder(principal), start=start, headers=headers)

    @app.post(
        "/v1/chat/completions",
        response_model=None,
        responses={
            200: {"description": "A chat completion, or with `stream` a text/event-stream of chunks ending in "
                                 "`data: [DONE]`.",
                  "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletionResponse"}},
                              "text/event-stream": {"schema": {"$ref": "#/components/schemas/ChatCompletionChunk"}}}},
            **_ERRORS,
        },
        tags=["chat"],
    )
    async def chat_completions(request: Request, body: ChatCompletionRequest,
                               principal: Principal = Depends(caller)) -> Response:  # noqa: B008
        """Creates a model response for a conversation (the model's chat template renders it)."""
        check_bounds(body, limits)
        return await chat.handle(body, await context(request, principal))

    @app.post(
        "/v1/completions",
        response_model=None,
        responses={
            200: {"description": "A text completion, or with `stream` a text/event-stream of the same objects "
                                 "ending in `data: [DONE]`.",
                  "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CompletionResponse"}},
                              "text/event-stream": {"schema": {"$ref": "#/components/schemas/CompletionResponse"}}}},
            **_ERRORS,
        },
        tags=["completions"],
    )
    async def completions(request: Request, body: CompletionRequest,
                          principal: Principal = Depends(caller)) -> Response:  # noqa: B008
        """Creates a completion for a prompt (text or token ids)."""
        check_bounds(body, limits)
        return await completion.handle(body, await context(request, principal))

    # ---------------------------------------------------------------------- admin
    @app.get("/v1/admin/workers", include_in_schema=False)
    async def admin_workers(principal: Principal = Depends(admin)) -> JSONResponse:  # noqa: B008
        return JSONResponse({"object": "list", "data": [_worker_json(w) for w in pool.workers()]})

    @app.post("/v1/admin/workers", include_in_schema=False)
    async def admin_register(address: str = Body(embed=True), principal: Principal = Depends(admin)) -> JSONResponse:  # noqa: B008
        worker = await pool.register(address, by_key=principal.key is not None)
        return JSONResponse(_worker_json(worker))

    @app.delete("/v1/admin/workers/{worker:path}", include_in_schema=False)
    async def admin_deregister(worker: str, principal: Principal = Depends(admin)) -> JSONResponse:  # noqa: B008
        await pool.deregister(worker)
        return JSONResponse({"deleted": True, "worker": worker})

    @app.post("/v1/admin/adapters", include_in_schema=False)
    async def admin_load_adapter(body: LoadAdapterBody, principal: Principal = Depends(admin)) -> JSONResponse:  # noqa: B008
        served, workers = await pool.load_adapter(body.adapter, body.served_name or "", body.base or "", body.workers)
        return JSONResponse(AdapterLoadResult(model=model_card(served), workers=workers).model_dump())

    @app.delete("/v1/admin/adapters/{served_name:path}", include_in_schema=False)
    async def admin_unload_adapter(served_name: str, principal: Principal = Depends(admin)) -> JSONResponse:  # noqa: B008
        workers = await pool.unload_adapter(served_name)
        return JSONResponse({"id": served_name, "object": "model", "deleted": True, "workers": workers})

    # Referenced by the 200 responses above: keep them in the schema.
    app.openapi_extra_models = (ChatCompletionResponse, ChatCompletionChunk, CompletionResponse)
    _install_schema(app)
    return app


def _install_schema(app: FastAPI) -> None:
    """Add the response models referenced by hand (streams) to components, and drop 422s."""
    from pydantic.json_schema import models_json_schema

    _drop_422(app)
    inner = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = inner()
        _, defs = models_json_schema([(m, "serialization") for m in app.openapi_extra_models],
                                     ref_template="#/components/schemas/{model}")
        comps = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, s in defs.get("$defs", {}).items():
            comps.setdefault(name, s)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
