"""The engine worker end to end over gRPC on loopback (transformers engine, tiny model):
Generate streamed and not, echo and logprobs, cancellation aborting the engine request, models
and adapters, tokenizer RPCs, errors with details, health while loading, gateway registration,
metrics and traces."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc_status import rpc_status
from prometheus_client import REGISTRY
from swiftmesh.services.gateway.worker_server import SERVICE_NAME, ModelSource, WorkerRuntime, create_service

from swiftmesh.gateway.v1 import gateway_pb2, gateway_pb2_grpc, inference_pb2_grpc
from swiftmesh.gateway.v1 import inference_pb2 as pb
from swiftmesh.runtime.client import channel, domain_error
from swiftmesh.runtime.config import Settings
from swiftmesh.runtime.health import check
from swiftmesh.runtime.server import Service, start_server
from swiftmesh.testing.services import settings_for, start_service

from .engines.helpers import make_lora_adapter

pytestmark = pytest.mark.asyncio(loop_scope="module")


def _settings(data_dir: Path, **worker) -> Settings:
    """Settings with every service on a free port and a CPU worker; ``worker`` overrides its fields."""
    return settings_for(data_dir, worker={"device": "cpu", **worker})


async def wait_serving(target: str, settings: Settings, timeout: float = 60) -> None:
    for _ in range(int(timeout / 0.1)):
        if await check(target, settings, SERVICE_NAME) == "SERVING":
            return
        await asyncio.sleep(0.1)
    raise AssertionError("worker never became SERVING")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def worker(tiny_model_dir, tmp_path_factory):
    settings = _settings(tmp_path_factory.mktemp("worker"), model=str(tiny_model_dir), max_num_seqs=8)
    running = await start_service("worker", settings)
    ch = channel(running.target, settings)
    yield running, settings, inference_pb2_grpc.InferenceServiceStub(ch)
    await ch.close()
    await running.stop(1)


def _params(**kw) -> pb.SamplingParams:
    kw.setdefault("logprobs", -1)
    kw.setdefault("prompt_logprobs", -1)
    return pb.SamplingParams(**kw)


async def _run(stub, req: pb.GenerateRequest) -> list[pb.GenerateResponse]:
    return [m async for m in stub.Generate(req)]


def _texts(msgs: list[pb.GenerateResponse]) -> dict[int, str]:
    out: dict[int, str] = {}
    for m in msgs:
        for o in m.outputs:
            out[o.index] = out.get(o.index, "") + o.text
    return out


async def test_streamed_equals_non_streamed(worker):
    _, _, stub = worker
    chat = pb.ChatPrompt(messages=[pb.ChatMessage(role="user", content="What is the capital of France?")])
    sampling = _params(max_tokens=24, temperature=0, n=2, seed=1)
    streamed = await _run(stub, pb.GenerateRequest(request_id="s", model="tiny-llama", chat=chat, sampling=sampling,
                                                   stream=True))
    whole = await _run(stub, pb.GenerateRequest(request_id="w", model="tiny-llama", chat=chat, sampling=sampling))
    assert len(streamed) > 3 and all(m.request_id == "s" for m in streamed)
    assert len(whole) == 2  # one message per choice
    assert _texts(streamed) == _texts(whole) and _texts(whole)[0]
    assert {o.index: o.finish_reason for m in whole for o in m.outputs} == {0: "length", 1: "length"}
    for msgs in (streamed, whole):
        last = msgs[-1]
        assert last.usage.completion_tokens == 48 and last.usage.prompt_tokens > 5
        assert all(not m.HasField("usage") for m in msgs[:-1])


async def test_echo_logprobs_and_stop(worker):
    _, _, stub = worker
    msgs = await _run(stub, pb.GenerateRequest(
        request_id="e", model="tiny-llama", text="one two three", echo=True, stream=True,
        sampling=_params(max_tokens=4, temperature=0, logprobs=2, prompt_logprobs=2, ignore_eos=True)))
    first = msgs[0]
    assert first.prompt_text == "one two three" and len(first.prompt_token_ids) >= 3
    assert len(first.prompt_logprobs) == len(first.prompt_token_ids)
    assert not first.prompt_logprobs[0].HasField("logprob") and first.prompt_logprobs[1].HasField("logprob")
    lps = [lp for m in msgs for o in m.outputs for lp in o.logprobs]
    assert len(lps) == 4 and all(len(lp.top_logprobs) == 2 and lp.logprob <= 0 for lp in lps)
    assert all(not m.prompt_text for m in msgs[1:])

    ref = _texts(await _run(stub, pb.GenerateRequest(model="tiny-llama", text="hello",
                                                     sampling=_params(max_tokens=30, temperature=0, ignore_eos=True))))[0]
    stop = ref[5:8]
    msgs = await _run(stub, pb.GenerateRequest(model="tiny-llama", text="hello", stream=True, sampling=_params(
        max_tokens=30, temperature=0, ignore_eos=True, stop=[stop])))
    final = next(o for m in msgs for o in m.outputs if o.finish_reason)
    assert (final.finish_reason, final.stop_reason) == ("stop", stop)
    assert _texts(msgs)[0] == ref[: ref.index(stop)]


async def test_cancelling_the_call_aborts_the_engine_request(worker):
    _, _, stub = worker
    call = stub.Generate(pb.GenerateRequest(model="tiny-llama", text="one", stream=True,
                                            sampling=_params(max_tokens=1000, temperature=0, ignore_eos=True)))
    got = 0
    async for _ in call:
        got += 1
        if got == 2:
            break
    status = await stub.GetWorkerStatus(pb.GetWorkerStatusRequest())
    assert status.running == 1 and status.ready and status.engine == "transformers" and status.device == "cpu"
    call.cancel()
    for _ in range(200):
        status = await stub.GetWorkerStatus(pb.GetWorkerStatusRequest())
        if status.running == 0:
            break
        await asyncio.sleep(0.02)
    assert status.running == 0 and status.waiting == 0


async def test_errors_carry_status_and_details(worker):
    _, _, stub = worker
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await _run(stub, pb.GenerateRequest(model="nope", text="x", sampling=_params(max_tokens=1)))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await _run(stub, pb.GenerateRequest(model="tiny-llama", text="x", sampling=_params(max_tokens=1, logprobs=21)))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    err = domain_error(e.value)
    assert [fv.field for fv in err.field_violations] == ["sampling.logprobs"]
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await _run(stub, pb.GenerateRequest(model="tiny-llama", sampling=_params(max_tokens=1)))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and rpc_status.from_call(e.value) is not None
    bad_json = pb.ChatPrompt(messages=[pb.ChatMessage(role="user", content="x")], tools_json="{nope")
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await _run(stub, pb.GenerateRequest(model="tiny-llama", chat=bad_json, sampling=_params(max_tokens=1)))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "chat.tools_json" in e.value.details()
    # the worker keeps serving
    assert _texts(await _run(stub, pb.GenerateRequest(model="tiny-llama", text="x",
                                                      sampling=_params(max_tokens=2, temperature=0))))


async def test_models_adapters_and_tokenizer_rpcs(worker, tiny_model_dir, tmp_path_factory):
    _, _, stub = worker
    models = (await stub.ListModels(pb.ListModelsRequest())).models
    assert [m.id for m in models] == ["tiny-llama"] and models[0].has_chat_template and models[0].max_model_len == 1024
    adapter = make_lora_adapter(tiny_model_dir, tmp_path_factory.mktemp("ad") / "my-lora", seed=3)
    served = await stub.LoadAdapter(pb.LoadAdapterRequest(hub_model=str(adapter)))
    assert (served.id, served.parent) == ("my-lora", "tiny-llama")
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.LoadAdapter(pb.LoadAdapterRequest(hub_model=str(adapter)))
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
    req = {"text": "the capital", "sampling": _params(max_tokens=12, temperature=0, ignore_eos=True)}
    base = _texts(await _run(stub, pb.GenerateRequest(model="tiny-llama", **req)))
    tuned = _texts(await _run(stub, pb.GenerateRequest(model="my-lora", **req)))
    assert base != tuned
    await stub.UnloadAdapter(pb.UnloadAdapterRequest(served_name="my-lora"))
    assert [m.id for m in (await stub.ListModels(pb.ListModelsRequest())).models] == ["tiny-llama"]

    tok = await stub.Tokenize(pb.TokenizeRequest(model="tiny-llama", text="hello world"))
    assert tok.max_model_len == 1024 and tok.token_ids
    text = (await stub.Detokenize(pb.DetokenizeRequest(model="tiny-llama", token_ids=tok.token_ids))).text
    assert text.endswith("hello world")
    chat = await stub.Tokenize(pb.TokenizeRequest(model="tiny-llama", chat=pb.ChatPrompt(
        messages=[pb.ChatMessage(role="user", content="hi")])))
    assert chat.prompt_text.endswith("<|im_start|>assistant\n")


async def test_metrics_and_traces(worker):
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from swiftmesh.runtime.telemetry import add_span_processor

    _, _, stub = worker
    exporter = InMemorySpanExporter()
    add_span_processor(SimpleSpanProcessor(exporter))

    def sample(name: str) -> float:
        return REGISTRY.get_sample_value(name, {"model": "tiny-llama"}) or 0.0

    ttft0 = sample("swiftmesh_worker_time_to_first_token_seconds_count")
    out0 = sample("swiftmesh_worker_generation_tokens_total")
    msgs = await _run(stub, pb.GenerateRequest(model="tiny-llama", text="one two", request_id="traced",
                                               sampling=_params(max_tokens=5, temperature=0, ignore_eos=True)))
    assert msgs[-1].usage.completion_tokens == 5
    assert sample("swiftmesh_worker_time_to_first_token_seconds_count") == ttft0 + 1
    assert sample("swiftmesh_worker_generation_tokens_total") == out0 + 5
    assert sample("swiftmesh_worker_time_per_output_token_seconds_count") >= 1

    from opentelemetry.trace import SpanKind

    finished = exporter.get_finished_spans()
    spans = {s.name: s for s in finished}
    worker_span = spans["text_completion tiny-llama"]
    engine_span = spans["transformers generate tiny-llama"]
    rpc = next(s for s in finished if s.name.endswith("InferenceService/Generate") and s.kind == SpanKind.SERVER)
    assert worker_span.attributes["gen_ai.request.model"] == "tiny-llama"
    assert worker_span.attributes["gen_ai.usage.output_tokens"] == 5
    assert worker_span.attributes["gen_ai.usage.input_tokens"] == msgs[-1].usage.prompt_tokens
    assert engine_span.attributes["gen_ai.usage.output_tokens"] == 5
    assert engine_span.attributes["gen_ai.response.finish_reasons"] == ("length",)
    assert engine_span.parent.span_id == worker_span.context.span_id
    assert worker_span.parent.span_id == rpc.context.span_id
    assert len({s.context.trace_id for s in (rpc, worker_span, engine_span)}) == 1


class _SlowSource(ModelSource):
    def __init__(self, settings, path: Path) -> None:
        super().__init__(settings)
        self.path = path
        self.release = asyncio.Event()

    async def resolve(self, name: str):
        await self.release.wait()
        return self.path, "plain", ""


class _Gateway(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self) -> None:
        self.registered: list[str] = []
        self.deregistered: list[str] = []

    async def RegisterWorker(self, request, context):
        self.registered.append(request.address)
        return gateway_pb2.Worker(name=f"workers/{len(self.registered)}", address=request.address)

    async def DeregisterWorker(self, request, context):
        self.deregistered.append(request.name)
        from google.protobuf import empty_pb2

        return empty_pb2.Empty()


async def test_not_serving_while_loading_then_registers(tmp_path):
    from swiftmesh.testing.tiny import make_tiny_llama

    plain = make_tiny_llama(tmp_path / "plain", chat_template=False)
    settings = _settings(tmp_path / "data", model="plain", register_with=None)
    gw_settings = settings
    gateway = _Gateway()
    gsvc = Service("gateway", endpoint=settings.gateway)
    gsvc.add(gateway, gateway_pb2_grpc.add_GatewayServiceServicer_to_server, "swiftmesh.gateway.v1.GatewayService")
    grunning = await start_server(gsvc, gw_settings)
    settings.worker.register_with = grunning.target
    source = _SlowSource(settings, plain)
    service = create_service(settings, WorkerRuntime(settings, source=source))
    running = await start_server(service, settings)
    try:
        assert await check(running.target, settings, SERVICE_NAME) == "NOT_SERVING"
        async with channel(running.target, settings) as ch:
            stub = inference_pb2_grpc.InferenceServiceStub(ch)
            assert not (await stub.GetWorkerStatus(pb.GetWorkerStatusRequest())).ready
            source.release.set()
            await wait_serving(running.target, settings)
            status = await stub.GetWorkerStatus(pb.GetWorkerStatusRequest())
            assert status.ready and [m.id for m in status.models] == ["plain"] and not status.models[0].has_chat_template
            for _ in range(100):
                if gateway.registered:
                    break
                await asyncio.sleep(0.05)
            assert gateway.registered == [settings.worker.target]
            # a model without a chat template: chat is a clear INVALID_ARGUMENT, text works
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await _run(stub, pb.GenerateRequest(model="plain", sampling=_params(max_tokens=1), chat=pb.ChatPrompt(
                    messages=[pb.ChatMessage(role="user", content="hi")])))
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert domain_error(e.value).reason == "NO_CHAT_TEMPLATE"
            assert _texts(await _run(stub, pb.GenerateRequest(model="plain", text="hi",
                                                              sampling=_params(max_tokens=2, temperature=0))))
    finally:
        await running.stop(1)
        await grunning.stop(0)
    assert gateway.deregistered == ["workers/1"]
