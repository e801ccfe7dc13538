"""Typed async clients of the gateway's gRPC admin service and of engine workers.

    async with GatewayClient(settings) as gw:
        worker = await gw.register_worker("10.0.0.5:50054")
        key, secret = await gw.create_api_key("ci", requests_per_minute=60)

    async with WorkerClient(settings, "10.0.0.5:50054") as w:
        await w.load_model("models/SmolLM2-135M-Instruct")
        await w.load_adapter("models/smol-sft", base="SmolLM2-135M-Instruct")

The OpenAI REST API of the gateway is used with the ``openai`` SDK (``base_url`` =
``http://<gateway host>:<gateway.http_port>/v1``); :func:`openai_base_url` builds it.
Errors raise :mod:`swiftmesh.runtime.errors` exceptions (``NotFound``, ``InvalidArgument`` ...).
"""

from __future__ import annotations

from swiftmesh.clients.base import ServiceClient
from swiftmesh.gateway.v1 import gateway_pb2, gateway_pb2_grpc, inference_pb2, inference_pb2_grpc
from swiftmesh.runtime.client import raise_domain_errors
from swiftmesh.runtime.config import Settings

__all__ = ["GatewayClient", "WorkerClient", "openai_base_url"]

#: Deadline of model and adapter loads (they may download from the hub), seconds.
LOAD_TIMEOUT_S = 1800.0


def openai_base_url(settings: Settings) -> str:
    """``http://host:http_port/v1`` of the gateway's OpenAI API (``gateway.address``'s host if set)."""
    ep = settings.gateway
    host = ep.address.rsplit(":", 1)[0] if ep.address else ep.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{host}:{ep.http_port}/v1"


class GatewayClient(ServiceClient):
    """Client of ``swiftmesh.gateway.v1.GatewayService`` (workers and API keys).

    Args:
        settings: SwiftMesh settings (deadline, auth token, TLS).
        target: the gateway's gRPC address (default ``settings.gateway.target``).
    """

    def __init__(self, settings: Settings, target: str | None = None) -> None:
        super().__init__(settings, target or settings.gateway.target)
        self._stub: gateway_pb2_grpc.GatewayServiceStub | None = None

    def _open(self) -> None:
        self._stub = gateway_pb2_grpc.GatewayServiceStub(self._channel)

    @property
    def stub(self) -> gateway_pb2_grpc.GatewayServiceStub:
        if self._stub is None:
            raise RuntimeError("GatewayClient is not open: use `async with GatewayClient(settings) as gw:`")
        return self._stub

    async def register_worker(self, address: str) -> gateway_pb2.Worker:
        """Add a worker by ``host:port`` (idempotent); returns it as the gateway sees it."""
        with raise_domain_errors():
            return await self.stub.RegisterWorker(gateway_pb2.RegisterWorkerRequest(address=address))

    async def deregister_worker(self, name: str) -> None:
        """Remove a worker by ``workers/{id}`` or address."""
        with raise_domain_errors():
            await self.stub.DeregisterWorker(gateway_pb2.DeregisterWorkerRequest(name=name))

    async def list_workers(self) -> list[gateway_pb2.Worker]:
        """Every worker (all pages)."""
        out: list[gateway_pb2.Worker] = []
        token = ""
        with raise_domain_errors():
            while True:
                resp = await self.stub.ListWorkers(gateway_pb2.ListWorkersRequest(page_size=1000, page_token=token))
                out.extend(resp.workers)
                token = resp.next_page_token
                if not token:
                    return out

    async def create_api_key(self, display_name: str = "", *, requests_per_minute: int = 0,
                             tokens_per_minute: int = 0, admin: bool = False) -> tuple[gateway_pb2.ApiKey, str]:
        """Create a key; returns ``(key, secret)``. The secret is shown only here. Limits per
        minute, 0 for unlimited."""
        with raise_domain_errors():
            resp = await self.stub.CreateApiKey(gateway_pb2.CreateApiKeyRequest(
                display_name=display_name, requests_per_minute=requests_per_minute,
                tokens_per_minute=tokens_per_minute, admin=admin))
        return resp.api_key, resp.secret

    async def list_api_keys(self) -> list[gateway_pb2.ApiKey]:
        """Every key (all pages), oldest first; secrets are never returned."""
        out: list[gateway_pb2.ApiKey] = []
        token = ""
        with raise_domain_errors():
            while True:
                resp = await self.stub.ListApiKeys(gateway_pb2.ListApiKeysRequest(page_size=1000, page_token=token))
                out.extend(resp.api_keys)
                token = resp.next_page_token
                if not token:
                    return out

    async def delete_api_key(self, name: str) -> None:
        """Delete ``apiKeys/{key}`` (a bare id works too)."""
        if not name.startswith("apiKeys/"):
            name = f"apiKeys/{name}"
        with raise_domain_errors():
            await self.stub.DeleteApiKey(gateway_pb2.DeleteApiKeyRequest(name=name))


class WorkerClient(ServiceClient):
    """Client of an engine worker's ``swiftmesh.gateway.v1.InferenceService`` (admin calls).

    Args:
        settings: SwiftMesh settings.
        target: the worker's address (default ``settings.worker.target``).
    """

    def __init__(self, settings: Settings, target: str | None = None) -> None:
        super().__init__(settings, target or settings.worker.target)
        self._stub: inference_pb2_grpc.InferenceServiceStub | None = None

    def _open(self) -> None:
        self._stub = inference_pb2_grpc.InferenceServiceStub(self._channel)

    @property
    def stub(self) -> inference_pb2_grpc.InferenceServiceStub:
        if self._stub is None:
            raise RuntimeError("WorkerClient is not open: use `async with WorkerClient(settings, addr) as w:`")
        return self._stub

    async def status(self, timeout: float | None = None) -> inference_pb2.WorkerStatus:
        with raise_domain_errors():
            return await self.stub.GetWorkerStatus(inference_pb2.GetWorkerStatusRequest(), timeout=timeout)

    async def load_model(self, hub_model: str, served_name: str = "", *, max_model_len: int = 0,
                         dtype: str = "") -> inference_pb2.ServedModel:
        """Load a base model: a hub name (``models/{model}`` or ``{model}``) or a directory on
        the worker's host (the worker resolves it)."""
        with raise_domain_errors():
            return await self.stub.LoadModel(inference_pb2.LoadModelRequest(
                hub_model=hub_model, served_name=served_name, max_model_len=max_model_len, dtype=dtype),
                timeout=LOAD_TIMEOUT_S)

    async def load_adapter(self, hub_model: str, served_name: str = "", base: str = "") -> inference_pb2.ServedModel:
        """Load a PEFT adapter (hub name or directory on the worker's host) on top of the
        worker's base model."""
        with raise_domain_errors():
            return await self.stub.LoadAdapter(inference_pb2.LoadAdapterRequest(
                hub_model=hub_model, served_name=served_name, base=base), timeout=LOAD_TIMEOUT_S)

    async def unload_adapter(self, served_name: str) -> None:
        with raise_domain_errors():
            await self.stub.UnloadAdapter(inference_pb2.UnloadAdapterRequest(served_name=served_name))

    async def list_models(self) -> list[inference_pb2.ServedModel]:
        with raise_domain_errors():
            return list((await self.stub.ListModels(inference_pb2.ListModelsRequest())).models)
