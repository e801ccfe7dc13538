"""The main job end to end on the real model (SmolLM2 from the packaged GGUF), with reduced steps:
`swiftmesh up`, then `swiftmesh quickstart --yes` interrupted during SFT and run again.

Asserts what the issue measures: the answer to "Who are you?" names the new identity after and
not before; the hub lists base -> SFT adapter -> DPO adapter with their lineage; the second run
did not download again and resumed the SFT job from its checkpoint; one trace covers a chat
request from the gateway into the worker, and one covers a job's upload into the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from swiftmesh.quickstart.plan import QuickstartPlan
from swiftmesh.runtime.config import Settings
from swiftmesh.runtime.errors import NotFound
from swiftmesh.testing.otlp import OtlpCollector
from swiftmesh.testing.services import child_env, settings_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

QS_ARGS = {
    "--sft-max-steps": "16",
    "--save-steps": "4",
    "--sft-rows": "48",
    "--dpo-max-steps": "6",
    "--dpo-rows": "24",
}


@pytest.fixture
def collector():
    c = OtlpCollector().start()
    yield c
    c.stop()


@pytest.fixture
def stack(tmp_path, collector):
    """`swiftmesh up` with every service on free ports, exporting traces to the collector."""
    env = child_env(settings_for(tmp_path / "data"), collector.env())
    up = subprocess.Popen([sys.executable, "-m", "swiftmesh.cli.main", "up"], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = up.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "Press Ctrl-C" in line:
            break
    if not any("Press Ctrl-C" in ln for ln in lines):
        up.kill()
        pytest.fail("swiftmesh up did not start:\n" + "".join(lines))
    yield env
    up.send_signal(signal.SIGINT)
    try:
        up.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(up.pid, signal.SIGKILL)


def _quickstart(env, report, **popen):
    args = [sys.executable, "-m", "swiftmesh.cli.main", "quickstart", "--yes", "--report", str(report)]
    for k, v in QS_ARGS.items():
        args += [k, v]
    return subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)


def _plan_key() -> str:
    return QuickstartPlan(sft_max_steps=16, save_steps=4, sft_rows=48, dpo_max_steps=6, dpo_rows=24).key()


async def _job(settings, name):
    from swiftmesh.clients.trainer import TrainerClient

    async with TrainerClient(settings) as t:
        return await t.get(name)


async def _models(settings):
    from swiftmesh.clients.hub import HubClient

    async with HubClient(settings) as hub:
        return {m.name: m for m in await hub.list()}


def test_quickstart_end_to_end(stack, tmp_path, collector):
    settings = Settings.load(None, data_dir=stack["SWIFTMESH_DATA_DIR"], **{
        svc: {"port": int(stack[f"SWIFTMESH_{svc.upper()}__PORT"])} for svc in ("hub", "trainer", "aligner", "worker")})
    env = stack
    sft_job = f"jobs/quickstart-sft-{_plan_key()}"

    # -- first run: Ctrl-C once the SFT job has saved a checkpoint ------------------------------
    first = _quickstart(env, tmp_path / "first.json")
    output = []
    deadline = time.monotonic() + 900
    checkpointed = False
    while time.monotonic() < deadline and first.poll() is None:
        with contextlib.suppress(NotFound):  # not created yet
            if asyncio.run(_job(settings, sft_job)).checkpoints:
                checkpointed = True
                break
        time.sleep(2)
    assert checkpointed, f"no SFT checkpoint; quickstart said:\n{first.stdout.read() if first.poll() is not None else ''}"
    first.send_signal(signal.SIGINT)
    out, _ = first.communicate(timeout=180)
    output.append(out)
    assert first.returncode == 130, out
    job = asyncio.run(_job(settings, sft_job))
    for _ in range(60):  # CANCELLING -> CANCELLED
        if job.state != 5:
            break
        time.sleep(1)
        job = asyncio.run(_job(settings, sft_job))
    from swiftmesh.jobs.v1 import jobs_pb2

    assert job.state == jobs_pb2.JOB_STATE_CANCELLED, jobs_pb2.JobState.Name(job.state)
    assert job.checkpoints, "the cancelled job lost its checkpoint"
    cancelled_at = job.progress.step
    base_before = asyncio.run(_models(settings))["models/smollm2-135m-instruct"]

    # -- second run: picks up what is done and finishes -----------------------------------------
    second = _quickstart(env, tmp_path / "second.json")
    out, _ = second.communicate(timeout=1500)
    output.append(out)
    assert second.returncode == 0, out
    report = json.loads((tmp_path / "second.json").read_text())
    assert "nova" not in report["answer_before"].lower(), report["answer_before"]
    assert "nova" in report["answer_after"].lower(), report["answer_after"]

    job = asyncio.run(_job(settings, sft_job))
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert job.attempt >= 2 and cancelled_at > 0  # resumed, not restarted under a new job

    models = asyncio.run(_models(settings))
    base = models["models/smollm2-135m-instruct"]
    assert base.create_time == base_before.create_time, "the base model was pulled again"
    sft = models[report["sft_model"]]
    dpo = models[report["dpo_model"]]
    assert sft.lineage.base_model == base.name and sft.lineage.job == sft_job
    assert dpo.lineage.parent_model == sft.name and dpo.lineage.base_model == base.name
    assert dpo.lineage.job == f"jobs/quickstart-dpo-{_plan_key()}"

    # -- traces -----------------------------------------------------------------------------------
    time.sleep(2)  # the batch span processors export every 0.5 s
    traces = collector.traces()
    chat = [t for t in traces.values()
            if {"swiftmesh-gateway", "swiftmesh-worker"} <= {s.service for s in t}
            and any("chat" in s.name.lower() for s in t)]
    assert chat, "no trace covers a chat request from the gateway into the worker"
    upload = [t for t in traces.values()
              if any(s.service == "swiftmesh-hub" and s.name.endswith("HubService/UploadModel") for s in t)
              and {s.service for s in t} & {"swiftmesh-trainer", "swiftmesh-aligner"}]
    assert upload, "no trace covers a job's upload into the hub: " + json.dumps(
        sorted({(s.service, s.name) for t in traces.values() for s in t if "Upload" in s.name}))
