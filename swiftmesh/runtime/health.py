"""Health checks of SwiftMesh services over the standard gRPC health protocol (grpc.health.v1)."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from swiftmesh.runtime.client import channel
from swiftmesh.runtime.config import Settings


async def check(target: str, settings: Settings, service: str = "", timeout: float = 3.0) -> str:
    """Health of ``service`` ("" for the whole server) at ``target``.

    Returns "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN", "UNKNOWN", or "UNREACHABLE" when the
    server cannot be reached within ``timeout`` seconds. Never raises for RPC failures.
    """
    async with channel(target, settings, timeout=timeout, retries=False) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        try:
            resp = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            return "UNREACHABLE"
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
