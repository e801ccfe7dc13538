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

:class:`WorkerClient` speaks in the domain types of :mod:`swiftmesh.clients.inference`
(``ServedModel``, ``WorkerStatus``, ``GenerateRequest`` / ``GenerateResponse``), never in
protobuf messages: the gateway's router uses it for every call to a worker.
"""

from __future__ import annotations

import json
from typing import Self

import grpc

from swiftmesh.clients.base import ServiceClient, all_pages
from swiftmesh.clients.inference import (
    ChatPrompt,
    CompletionOutput,
    GenerateRequest,
    GenerateResponse,
    SamplingParams,
    ServedModel,
    StructuredOutput,
    TokenLogprob,
    TopLogprob,
    Usage,
    WorkerStatus,
)
from swiftmesh.gateway.v1 import gateway_pb2, gateway_pb2_grpc, inference_pb2, inference_pb2_grpc
from swiftmesh.runtime.client import channel, domain_error, raise_domain_errors
from swiftmesh.runtime.config import Settings
from swiftmesh.runtime.errors import InvalidArgument

__all__ = ["GatewayClient", "GenerationCall", "WorkerClient", "openai_base_url"]

#: Deadline of model and adapter loads (they may download from the hub), seconds.
LOAD_TIMEOUT_S = 1800.0


def openai_base_url(settings: Settings) -> str:
    """``http://host:http_port/v1`` of the gateway's OpenAI API (``gateway.address``'s host if set)."""
    ep = settings.gateway
    host = ep.address.rsplit(":", 1)[0] if ep.address else ep.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{host}:{ep.http_port}/v1"


class _TunedClient(ServiceClient):
    """A ServiceClient whose channel may leave out retries (callers that fail over themselves)
    or use another unary deadline; :meth:`open` opens it without ``async with``."""

    def __init__(self, settings: Settings, target: str, *, timeout: float | None = None, retries: bool = True) -> None:
        super().__init__(settings, target)
        self._timeout = timeout
        self._retries = retries

    def open(self) -> Self:
        """Open the channel now (idempotent); :meth:`close` closes it."""
        if self._channel is None:
            self._channel = channel(self.target, self.settings, timeout=self._timeout, retries=self._retries)
            self._open()
        return self

    async def __aenter__(self) -> Self:
        return self.open()

    async def close(self, grace: float | None = None) -> None:
        """Close the channel; calls in flight get ``grace`` seconds (None: cancelled now)."""
        if self._channel is not None:
            ch, self._channel = self._channel, None
            await ch.close(grace)


class GenerationCall:
    """One ``Generate`` stream in flight: :meth:`read` the responses one by one (None at the
    end; a domain error, e.g. Unavailable when the worker went away); :meth:`cancel` aborts the
    request in the engine."""

    __slots__ = ("_call",)

    def __init__(self, call) -> None:
        self._call = call

    async def read(self) -> GenerateResponse | None:
        """The next response, or None when the stream ended. Raises the worker's domain error."""
        try:
            msg = await self._call.read()
        except grpc.aio.AioRpcError as e:
            raise domain_error(e) from None
        if msg is grpc.aio.EOF:
            return None
        return response_from_proto(msg)

    def cancel(self) -> None:
        """Cancel the call (the worker aborts the engine request); idempotent."""
        self._call.cancel()


class GatewayClient(_TunedClient):
    """Client of ``swiftmesh.gateway.v1.GatewayService`` (workers and API keys).

    Args:
        settings: SwiftMesh settings (deadline, auth token, TLS).
        target: the gateway's gRPC address (default ``settings.gateway.target``).
        timeout: deadline of each call, seconds (default ``settings.rpc_timeout_s``).
        retries: retry UNAVAILABLE on the channel.
    """

    def __init__(self, settings: Settings, target: str | None = None, *, timeout: float | None = None,
                 retries: bool = True) -> None:
        super().__init__(settings, target or settings.gateway.target, timeout=timeout, retries=retries)
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
        return await all_pages(
            lambda token: self.stub.ListWorkers(gateway_pb2.ListWorkersRequest(page_size=1000, page_token=token)),
            "workers")

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
        return await all_pages(
            lambda token: self.stub.ListApiKeys(gateway_pb2.ListApiKeysRequest(page_size=1000, page_token=token)),
            "api_keys")

    async def delete_api_key(self, name: str) -> None:
        """Delete ``apiKeys/{key}`` (a bare id works too)."""
        if not name.startswith("apiKeys/"):
            name = f"apiKeys/{name}"
        with raise_domain_errors():
            await self.stub.DeleteApiKey(gateway_pb2.DeleteApiKeyRequest(name=name))


class WorkerClient(_TunedClient):
    """Client of an engine worker's ``swiftmesh.gateway.v1.InferenceService``: generation,
    status and the admin calls.

    Args:
        settings: SwiftMesh settings.
        target: the worker's address (default ``settings.worker.target``).
        retries: retry UNAVAILABLE on the channel (the gateway's router turns it off: it fails
            over to another worker instead).
    """

    def __init__(self, settings: Settings, target: str | None = None, *, retries: bool = True) -> None:
        super().__init__(settings, target or settings.worker.target, retries=retries)
        self._stub: inference_pb2_grpc.InferenceServiceStub | None = None

    def _open(self) -> None:
        self._stub = inference_pb2_grpc.InferenceServiceStub(self._channel)

    @property
    def stub(self) -> inference_pb2_grpc.InferenceServiceStub:
        if self._stub is None:
            raise RuntimeError("WorkerClient is not open: use `async with WorkerClient(settings, addr) as w:`")
        return self._stub

    def generate(self, request: GenerateRequest) -> GenerationCall:
        """Start a generation (server stream). InvalidArgument (``openai_code``
        ``invalid_unicode``) for text that cannot be encoded as UTF-8 (lone surrogates)."""
        try:
            proto = request_to_proto(request)
        except UnicodeEncodeError as e:
            raise InvalidArgument(f"the request contains text that is not valid Unicode ({e.reason})",
                                  reason="INVALID_UNICODE", metadata={"openai_code": "invalid_unicode"}) from None
        return GenerationCall(self.stub.Generate(proto))

    async def status(self, timeout: float | None = None) -> WorkerStatus:
        """The worker's engine, load, served models and readiness. DeadlineExceeded after ``timeout`` s."""
        with raise_domain_errors():
            return status_from_proto(
                await self.stub.GetWorkerStatus(inference_pb2.GetWorkerStatusRequest(), timeout=timeout))

    async def load_model(self, hub_model: str, served_name: str = "", *, max_model_len: int = 0,
                         dtype: str = "") -> ServedModel:
        """Load a base model: a hub name (``models/{model}`` or ``{model}``) or a directory on
        the worker's host (the worker resolves it)."""
        with raise_domain_errors():
            return served_model_from_proto(await self.stub.LoadModel(inference_pb2.LoadModelRequest(
                hub_model=hub_model, served_name=served_name, max_model_len=max_model_len, dtype=dtype),
                timeout=LOAD_TIMEOUT_S))

    async def unload_model(self, served_name: str) -> None:
        """Unload the base model (and its adapters). NotFound if the worker does not serve it."""
        with raise_domain_errors():
            await self.stub.UnloadModel(inference_pb2.UnloadModelRequest(served_name=served_name))

    async def load_adapter(self, hub_model: str, served_name: str = "", base: str = "") -> ServedModel:
        """Load a PEFT adapter (hub name or directory on the worker's host) on top of the
        worker's base model ``base`` (its only one when empty)."""
        with raise_domain_errors():
            return served_model_from_proto(await self.stub.LoadAdapter(inference_pb2.LoadAdapterRequest(
                hub_model=hub_model, served_name=served_name, base=base), timeout=LOAD_TIMEOUT_S))

    async def unload_adapter(self, served_name: str, timeout: float | None = None) -> None:
        """Unload an adapter by served name. NotFound if the worker does not serve it."""
        with raise_domain_errors():
            await self.stub.UnloadAdapter(inference_pb2.UnloadAdapterRequest(served_name=served_name),
                                          timeout=timeout)

    async def list_models(self) -> list[ServedModel]:
        """The base model and adapters the worker serves."""
        with raise_domain_errors():
            resp = await self.stub.ListModels(inference_pb2.ListModelsRequest())
        return [served_model_from_proto(m) for m in resp.models]


# ------------------------------------------------------------------ proto <-> domain (inference)
def _structured_to_proto(o: StructuredOutput) -> inference_pb2.StructuredOutput:
    if o.json_schema is not None:
        return inference_pb2.StructuredOutput(json_schema=o.json_schema)
    if o.regex is not None:
        return inference_pb2.StructuredOutput(regex=o.regex)
    if o.choice is not None:
        return inference_pb2.StructuredOutput(choice=inference_pb2.ChoiceList(choices=o.choice))
    return inference_pb2.StructuredOutput(json_object=o.json_object)


_OPTIONAL_SAMPLING = ("temperature", "top_p", "seed", "repetition_penalty", "logprobs", "prompt_logprobs",
                      "skip_special_tokens")


def _sampling_to_proto(s: SamplingParams) -> inference_pb2.SamplingParams:
    p = inference_pb2.SamplingParams(
        max_tokens=s.max_tokens, top_k=s.top_k, min_p=s.min_p, n=s.n, stop=s.stop, stop_token_ids=s.stop_token_ids,
        presence_penalty=s.presence_penalty, frequency_penalty=s.frequency_penalty, ignore_eos=s.ignore_eos,
        min_tokens=s.min_tokens, logit_bias=s.logit_bias,
    )
    for name in _OPTIONAL_SAMPLING:
        value = getattr(s, name)
        if value is not None:
            setattr(p, name, value)
    if s.structured_output is not None:
        p.structured_output.CopyFrom(_structured_to_proto(s.structured_output))
    return p


def _chat_to_proto(c: ChatPrompt) -> inference_pb2.ChatPrompt:
    p = inference_pb2.ChatPrompt(
        messages=[inference_pb2.ChatMessage(role=m.role, content=m.content, name=m.name, tool_call_id=m.tool_call_id,
                                            tool_calls_json=json.dumps(m.tool_calls) if m.tool_calls else "")
                  for m in c.messages],
        tools_json=json.dumps(c.tools) if c.tools else "",
        chat_template_kwargs_json=json.dumps(c.chat_template_kwargs) if c.chat_template_kwargs else "",
    )
    if c.add_generation_prompt is not None:
        p.add_generation_prompt = c.add_generation_prompt
    return p


def request_to_proto(r: GenerateRequest) -> inference_pb2.GenerateRequest:
    """The ``GenerateRequest`` message of a domain request. UnicodeEncodeError for text with
    lone surrogates (protobuf strings are UTF-8)."""
    g = inference_pb2.GenerateRequest(request_id=r.request_id, model=r.model, sampling=_sampling_to_proto(r.sampling),
                                      stream=r.stream, echo=r.echo)
    if r.chat is not None:
        g.chat.CopyFrom(_chat_to_proto(r.chat))
    elif r.token_ids is not None:
        g.token_ids.ids.extend(r.token_ids)
    else:
        g.text = r.text or ""
    return g


def _logprobs(items) -> list[TokenLogprob]:
    return [TokenLogprob(lp.token_id, lp.token, lp.logprob if lp.HasField("logprob") else None,
                         [TopLogprob(t.token_id, t.token, t.logprob) for t in lp.top_logprobs])
            for lp in items]


def response_from_proto(m: inference_pb2.GenerateResponse) -> GenerateResponse:
    """The domain chunk of a ``GenerateResponse`` message."""
    return GenerateResponse(
        request_id=m.request_id,
        outputs=[CompletionOutput(o.index, list(o.token_ids), o.text, _logprobs(o.logprobs) if o.logprobs else [],
                                  o.finish_reason, o.stop_reason) for o in m.outputs],
        prompt_token_ids=list(m.prompt_token_ids),
        prompt_logprobs=_logprobs(m.prompt_logprobs) if m.prompt_logprobs else [],
        usage=Usage(m.usage.prompt_tokens, m.usage.completion_tokens) if m.HasField("usage") else None,
        prompt_text=m.prompt_text,
    )


def served_model_from_proto(m: inference_pb2.ServedModel) -> ServedModel:
    """The domain ``ServedModel`` of its message."""
    return ServedModel(id=m.id, parent=m.parent, hub_model=m.hub_model, max_model_len=m.max_model_len,
                       has_chat_template=m.has_chat_template, created=m.created)


def status_from_proto(m: inference_pb2.WorkerStatus) -> WorkerStatus:
    """The domain ``WorkerStatus`` of its message."""
    return WorkerStatus(engine=m.engine, running=m.running, waiting=m.waiting, kv_cache_usage=m.kv_cache_usage,
                        models=[served_model_from_proto(x) for x in m.models], ready=m.ready, device=m.device)
