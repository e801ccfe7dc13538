"""Adapters at run time: the admin endpoint loads a LoRA adapter on the workers serving its base,
``/v1/models`` lists it with its ``parent``, requests select it by name, and it can be unloaded;
`swiftmesh deploy` starts or instructs a worker and registers it with the gateway."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import httpx
import openai
import pytest
from typer.testing import CliRunner

from swiftmesh.cli.main import app
from swiftmesh.testing.services import free_port
from tests.gateway.api.conftest import start_extra_gateway

MESSAGES = [{"role": "user", "content": "Hello, who are you?"}]
GREEDY = {"max_tokens": 12, "temperature": 0, "extra_body": {"ignore_eos": True}}


@pytest.fixture(scope="session")
def tiny_lora_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """A LoRA adapter of the tiny model with random (non-zero) weights, so it changes outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj", "o_proj"],
                                            init_lora_weights=False))
    out = tmp_path_factory.mktemp("lora") / "tiny-lora"
    model.save_pretrained(out)
    return out


def _models(stack) -> dict[str, dict]:
    return {m["id"]: m for m in httpx.get(f"{stack.base_url}/models").json()["data"]}


def test_load_list_use_unload_an_adapter(stack, tiny_lora_dir):
    client = stack.client()
    base_text = client.chat.completions.create(model=stack.model, messages=MESSAGES, **GREEDY).choices[0].message.content
    # Two base models are served (tiny-llama, tiny-raw): the adapter's base must be named.
    r = httpx.post(f"{stack.base_url}/admin/adapters", json={"adapter": str(tiny_lora_dir)}, timeout=120)
    assert r.status_code == 400 and r.json()["error"]["param"] == "base"
    r = httpx.post(f"{stack.base_url}/admin/adapters", json={"adapter": str(tiny_lora_dir), "base": stack.model},
                   timeout=120)
    assert r.status_code == 200, r.text
    loaded = r.json()
    assert loaded["model"]["id"] == "tiny-lora" and loaded["model"]["parent"] == stack.model
    assert loaded["workers"] == [stack.settings.gateway.workers[0]]  # only the worker serving the base
    try:
        models = _models(stack)
        assert models["tiny-lora"]["parent"] == stack.model and models[stack.model]["parent"] is None
        assert client.models.retrieve("tiny-lora").parent == stack.model
        lora_text = client.chat.completions.create(model="tiny-lora", messages=MESSAGES, **GREEDY).choices[0].message.content
        assert lora_text != base_text  # the adapter is applied
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="tiny-lora", messages=MESSAGES, stream=True, **GREEDY) if c.choices)
        assert streamed == lora_text
        # The base model is unchanged next to it.
        assert client.chat.completions.create(model=stack.model, messages=MESSAGES, **GREEDY).choices[0].message.content == base_text
        # Unloading a base model through the adapter endpoint is refused.
        r = httpx.delete(f"{stack.base_url}/admin/adapters/{stack.model}")
        assert r.status_code == 400 and r.json()["error"]["param"] == "served_name"
    finally:
        r = httpx.delete(f"{stack.base_url}/admin/adapters/tiny-lora", timeout=60)
    assert r.status_code == 200 and r.json()["deleted"] is True
    assert "tiny-lora" not in _models(stack)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="tiny-lora", messages=MESSAGES, max_tokens=1)


def test_load_adapter_errors(stack, tmp_path):
    url = f"{stack.base_url}/admin/adapters"
    r = httpx.post(url, json={"adapter": str(tmp_path), "base": stack.model}, timeout=60)  # not an adapter
    assert r.status_code == 400 and r.json()["error"]["message"]
    r = httpx.post(url, json={"adapter": str(tmp_path), "base": "no-such-base"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = httpx.post(url, json={"adapter": ""})
    assert r.status_code == 400 and r.json()["error"]["param"] == "adapter"
    r = httpx.post(url, json={"adapter": "x", "bogus": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "bogus"


def _cli(stack, *args):
    env = {"SWIFTMESH_DATA_DIR": str(stack.settings.data_dir), "SWIFTMESH_GATEWAY__PORT": str(stack.gateway.port),
           "SWIFTMESH_GATEWAY__HTTP_PORT": str(stack.gateway_service.http_port)}
    return CliRunner().invoke(app, list(args), env=env)


def test_deploy_instructs_a_running_worker(stack, tiny_lora_dir, tmp_path):
    """`swiftmesh deploy --worker`: the model is already there, the adapter gets loaded, and the
    worker is registered with a gateway that did not know it."""
    gw = start_extra_gateway(stack, tmp_path / "gw", gateway={"workers": []})
    worker = stack.settings.gateway.workers[0]
    try:
        r = _cli(gw, "deploy", "--model", str(stack.model_dir), "--adapters", str(tiny_lora_dir),
                 "--worker", worker, "--timeout", "120")
        assert r.exit_code == 0, r.output
        assert "tiny-lora" in r.output and stack.model in r.output
        assert gw.client().models.retrieve("tiny-lora").parent == stack.model
        assert gw.client().chat.completions.create(model="tiny-lora", messages=MESSAGES, max_tokens=2).usage
    finally:
        stack.run(_unload(stack, worker, "tiny-lora"))
        stack.run(gw.gateway.stop(0.5))


async def _unload(stack, address: str, name: str) -> None:
    """Unload an adapter straight on the worker (the stack's gateway may not have polled it yet)."""
    from swiftmesh.clients.gateway import WorkerClient

    async with WorkerClient(stack.settings, address) as w:
        if name in {m.id for m in await w.list_models()}:
            await w.unload_adapter(name)
    await stack.pool.refresh_all()


def test_deploy_starts_a_worker(stack, tiny_lora_dir, tmp_path):
    """`swiftmesh deploy` without --worker: a worker process loads the model and adapters and is
    registered with the gateway."""
    gw = start_extra_gateway(stack, tmp_path / "gw", gateway={"workers": []})
    port = free_port()
    pid_file = gw.settings.data_dir / "logs" / f"worker-{port}.pid"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        r = _cli(gw, "deploy", "--model", str(stack.model_dir), "--adapters", str(tiny_lora_dir), "--engine",
                 "transformers", "--port", str(port), "--device", "cpu", "--timeout", "180")
        assert r.exit_code == 0, r.output
        assert pid_file.exists()
        models = {m.id: m for m in gw.client().models.list().data}
        assert set(models) == {stack.model, "tiny-lora"} and models["tiny-lora"].parent == stack.model
        workers = json.loads(_cli(gw, "workers", "ls", "--json").stdout)
        assert [w["address"] for w in workers] == [f"127.0.0.1:{port}"]
        assert gw.client().chat.completions.create(model="tiny-lora", messages=MESSAGES, max_tokens=2).usage
    finally:
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
        stack.run(gw.gateway.stop(0.5))
