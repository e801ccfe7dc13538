"""Gateway process: the OpenAI REST facade (uvicorn, same event loop) and the gRPC
GatewayService for administration, on the shared runtime."""

from __future__ import annotations

import asyncio
import contextlib

import uvicorn
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from swiftmesh.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from swiftmesh.runtime.config import Settings
from swiftmesh.runtime.placeholder import unimplemented
from swiftmesh.runtime.server import Service

class EmbeddedUvicorn(uvicorn.Server):
    """uvicorn inside our event loop: signals belong to runtime.server.serve, not uvicorn."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(title="SwiftMesh gateway", version="0.1.0")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest().decode(), media_type=CONTENT_TYPE_LATEST)

    return app


def create_service(settings: Settings) -> Service:
    """The gateway's Service description: gRPC admin service plus the HTTP server as hooks."""
    service = Service("gateway", endpoint=settings.gateway)
    service.add(unimplemented(gateway_pb2_grpc.GatewayServiceServicer, SERVICE_NAME),
                gateway_pb2_grpc.add_GatewayServiceServicer_to_server, SERVICE_NAME)
    http = EmbeddedUvicorn(uvicorn.Config(create_app(settings), host=settings.gateway.host,
                                         port=settings.gateway.http_port, log_level="warning", lifespan="on"))
    task: list[asyncio.Task] = []

    async def start_http() -> None:
        task.append(asyncio.create_task(http.serve()))
        while not http.started:
            if task[0].done():
                task[0].result()
                raise OSError(f"gateway: HTTP server failed to start on port {settings.gateway.http_port}")
            await asyncio.sleep(0.05)

    async def stop_http() -> None:
        http.should_exit = True
        if task:
            await task[0]

    service.on_start.append(start_http)
    service.on_stop.append(stop_http)
    return service
