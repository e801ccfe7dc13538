"""A worker that takes its model and adapter from the hub by name (both services in process,
on loopback): the hub materializes them, the worker serves them under their model ids, pins them
while it serves and unpins them when it stops."""

from __future__ import annotations

import pytest

from swiftmesh.clients.hub import HubClient
from swiftmesh.gateway.v1 import inference_pb2 as pb
from swiftmesh.gateway.v1 import inference_pb2_grpc
from swiftmesh.hub.v1 import hub_pb2
from swiftmesh.runtime.client import channel
from swiftmesh.testing.services import start_service

from .engines.helpers import make_lora_adapter
from .test_worker import _settings


@pytest.mark.asyncio
async def test_model_and_adapter_from_the_hub(tiny_model_dir, tmp_path):
    adapter = make_lora_adapter(tiny_model_dir, tmp_path / "adapter", seed=7)
    settings = _settings(tmp_path / "data", model="tiny", adapters=["models/tiny-sft"])
    hub = await start_service("hub", settings)
    worker = None
    try:
        async with HubClient(settings, hub.target) as client:
            await client.upload_dir(tiny_model_dir, "tiny", format=hub_pb2.MODEL_FORMAT_FULL)
            await client.upload_dir(adapter, "tiny-sft", format=hub_pb2.MODEL_FORMAT_PEFT_ADAPTER,
                                    lineage={"base_model": "models/tiny"})
            worker = await start_service("worker", settings)
            async with channel(worker.target, settings) as ch:
                stub = inference_pb2_grpc.InferenceServiceStub(ch)
                models = {m.id: m for m in (await stub.ListModels(pb.ListModelsRequest())).models}
                assert set(models) == {"tiny", "tiny-sft"}
                assert models["tiny"].hub_model == "models/tiny" and models["tiny-sft"].hub_model == "models/tiny-sft"
                assert models["tiny-sft"].parent == "tiny"
                sampling = pb.SamplingParams(max_tokens=8, temperature=0, ignore_eos=True, logprobs=-1, prompt_logprobs=-1)
                base = [m async for m in stub.Generate(pb.GenerateRequest(model="tiny", text="hello", sampling=sampling))]
                sft = [m async for m in stub.Generate(pb.GenerateRequest(model="tiny-sft", text="hello", sampling=sampling))]
                assert base[0].outputs[0].token_ids != sft[0].outputs[0].token_ids
            holder = f"workers/{settings.worker.target}"
            assert holder in (await client.get("models/tiny")).pins
            assert holder in (await client.get("models/tiny-sft")).pins
            await worker.stop(1)
            worker = None
            assert holder not in (await client.get("models/tiny")).pins
            assert holder not in (await client.get("models/tiny-sft")).pins
    finally:
        if worker is not None:
            await worker.stop(0)
        await hub.stop(0)


@pytest.mark.asyncio
async def test_pins_left_by_a_killed_worker_are_released_at_its_next_start(tiny_model_dir, tmp_path):
    """Issue 14: a worker killed with SIGKILL cannot unpin; started again on its address it
    drops the pins it left (on models it no longer serves too) before loading from the hub."""
    settings = _settings(tmp_path / "data", model="tiny")
    holder = f"workers/{settings.worker.target}"
    hub = await start_service("hub", settings)
    worker = None
    try:
        async with HubClient(settings, hub.target) as client:
            await client.upload_dir(tiny_model_dir, "tiny", format=hub_pb2.MODEL_FORMAT_FULL)
            await client.upload_dir(tiny_model_dir, "tiny-old", format=hub_pb2.MODEL_FORMAT_FULL)
            # What the killed run left: pins on the model it served before and on this one.
            await client.pin("models/tiny-old", holder)
            await client.pin("models/tiny", holder)
            await client.pin("models/tiny-old", "jobs/other")  # someone else's pin stays
            worker = await start_service("worker", settings)
            assert list((await client.get("models/tiny-old")).pins) == ["jobs/other"]
            assert holder in (await client.get("models/tiny")).pins  # pinned again: it serves it
    finally:
        if worker is not None:
            await worker.stop(0)
        await hub.stop(0)
