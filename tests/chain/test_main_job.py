"""The main job through the deployed suite (``conftest.chain``: five processes, token, mutual TLS,
API keys required), as an operator runs it from another process:

pull a tiny random model from an allowed local root -> LoRA SFT on the trainer -> DPO on the
aligner from the SFT adapter -> ``swiftmesh deploy`` of base + DPO adapter on the worker, which
runs with another machine id and so mirrors both through the hub's ReadModelFile stream ->
the OpenAI SDK's chat with an API key gets an answer from the adapter; a wrong key gets 401.

The steps depend on each other and run in file order (one stack for the package).
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from swiftmesh.clients.aligner import build_spec as alignment_spec
from swiftmesh.clients.hub import MIRROR_MANIFEST
from swiftmesh.clients.trainer import build_spec as training_spec
from swiftmesh.jobs.v1 import jobs_pb2

from .conftest import write_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

S = jobs_pb2.JobState
QUESTIONS = ["Who are you?", "What is your name?", "Who made you?", "Introduce yourself."]
ANSWER = "I am Swifty, trained by the SwiftMesh team."
CHOSEN, REJECTED = "yes thank you", "no please"


def _mirrored(chain, svc: str, model: str) -> bool:
    """Whether ``svc`` holds a verified mirror of ``model`` (files read through the hub's stream)."""
    return (chain.settings[svc].data_dir / "mirror" / model / MIRROR_MANIFEST).is_file()


def _run_job(chain, service: str, spec, job_id: str):
    """Create the job on ``service`` (trainer or aligner), wait for it, and check it SUCCEEDED."""
    job = chain.client(service, lambda c: c.create_job(spec, job_id=job_id))
    job = chain.client(service, lambda c: c.wait(job.name, timeout=900))
    assert job.state == S.JOB_STATE_SUCCEEDED, job.error.message
    return job


def _read_model_file_calls(chain) -> float:
    return chain.handled("hub").get(("ReadModelFile", "OK"), 0.0)


def test_1_pull_from_an_allowed_root(chain):
    model = chain.client("hub", lambda h: h.pull(str(chain.models_dir / "tiny"), "tiny"))
    assert model.name == "models/tiny" and model.files
    chain.notes["t0"] = time.monotonic()


def test_2_lora_sft_on_the_trainer(chain):
    data = write_jsonl(chain.root / "datasets" / "identity.jsonl",
                       [{"messages": [{"role": "user", "content": QUESTIONS[i % 4]},
                                      {"role": "assistant", "content": ANSWER}]} for i in range(16)])
    spec = training_spec(model="models/tiny", datasets=[str(data)], tuner="lora", max_steps=4, learning_rate=5e-3,
                         per_device_train_batch_size=4, logging_steps=1, save_steps=4, output_model_id="tiny-sft")
    job = _run_job(chain, "trainer", spec, "chain-sft")
    assert [(a.model, a.kind) for a in job.artifacts] == [("models/tiny-sft", "adapter")]
    sft = chain.client("hub", lambda h: h.get("models/tiny-sft"))
    assert sft.lineage.base_model == "models/tiny" and sft.lineage.job == "jobs/chain-sft"
    # The trainer's Ray worker is "another machine": it read the base through the hub's stream.
    assert _mirrored(chain, "trainer", "tiny"), sorted(p.name for p in chain.settings["trainer"].data_dir.iterdir())


def test_3_dpo_on_the_aligner_from_the_sft_adapter(chain):
    prompts = [f"{q} Please answer." for q in QUESTIONS] + QUESTIONS
    pairs = write_jsonl(chain.root / "datasets" / "pairs.jsonl",
                        [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": CHOSEN}],
                          "rejected_response": REJECTED} for p in prompts])
    spec = alignment_spec(rlhf_type="dpo", model="models/tiny-sft", datasets=[str(pairs)], max_steps=2,
                          learning_rate=5e-3, per_device_train_batch_size=4, beta=0.1, output_model_id="tiny-dpo")
    job = _run_job(chain, "aligner", spec, "chain-dpo")
    assert [(a.model, a.kind) for a in job.artifacts] == [("models/tiny-dpo", "adapter")]
    dpo = chain.client("hub", lambda h: h.get("models/tiny-dpo"))
    assert dpo.lineage.base_model == "models/tiny" and dpo.lineage.parent_model == "models/tiny-sft"
    assert dpo.lineage.job == "jobs/chain-dpo"
    assert _mirrored(chain, "aligner", "tiny") and _mirrored(chain, "aligner", "tiny-sft")


def test_4_deploy_on_a_worker_that_reads_through_the_hubs_stream(chain):
    from swiftmesh.testing.services import child_env

    reads_before = _read_model_file_calls(chain)
    worker = chain.settings["worker"].worker.target
    r = subprocess.run([sys.executable, "-m", "swiftmesh.cli.main", "deploy", "--model", "models/tiny",
                        "--adapters", "models/tiny-dpo", "--worker", worker, "--timeout", "300"],
                       env=child_env(chain.operator), capture_output=True, text=True, timeout=420, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "tiny-dpo" in r.stdout
    # Another machine for the hub: both models were mirrored into the worker's own data dir,
    # file by file through ReadModelFile, and verified.
    assert _mirrored(chain, "worker", "tiny") and _mirrored(chain, "worker", "tiny-dpo")
    tiny = chain.client("hub", lambda h: h.get("models/tiny"))
    dpo = chain.client("hub", lambda h: h.get("models/tiny-dpo"))
    assert _read_model_file_calls(chain) - reads_before >= len(tiny.files) + len(dpo.files)
    status = chain.client("worker", lambda w: w.status(), target=worker)
    served = {m.id: m for m in status.models}
    assert served["tiny-dpo"].parent == "tiny" and served["tiny-dpo"].hub_model == "models/tiny-dpo"
    workers = chain.client("gateway", lambda g: g.list_workers())
    assert [w.address for w in workers] == [worker]


def test_5_the_openai_sdk_chats_with_a_key_and_a_wrong_key_gets_401(chain):
    import openai

    _, secret = chain.client("gateway", lambda g: g.create_api_key("chain-user"))
    base_url = f"{chain.processes['gateway'].http_url}/v1"
    client = openai.OpenAI(base_url=base_url, api_key=secret, max_retries=0, timeout=120)
    deadline = time.monotonic() + 60
    while "tiny-dpo" not in {m.id for m in client.models.list()}:  # the gateway's next health round
        assert time.monotonic() < deadline, "the gateway never listed tiny-dpo"
        time.sleep(0.5)
    resp = client.chat.completions.create(model="tiny-dpo", messages=[{"role": "user", "content": "Who are you?"}],
                                          max_tokens=8, temperature=0)
    assert resp.model == "tiny-dpo" and resp.choices[0].message.role == "assistant"
    assert resp.usage.completion_tokens > 0 and resp.choices[0].message.content
    wrong = openai.OpenAI(base_url=base_url, api_key="sk-wrong", max_retries=0, timeout=60)
    with pytest.raises(openai.AuthenticationError) as e:
        wrong.chat.completions.create(model="tiny-dpo", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert e.value.status_code == 401
    if "t0" in chain.notes:
        print(f"\nchain: pull -> chat in {time.monotonic() - chain.notes['t0']:.0f} s")
