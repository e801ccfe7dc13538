"""`kill -9` of the trainer service mid-job, then a restart on the same data directory: with no
manual step the job resumes from its last recorded checkpoint, finishes, lands its adapter in the
hub (the same as an uninterrupted run's, within tolerance), and nothing half-written is used or
left behind (a partial checkpoint directory from the kill is removed, the others are complete)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
from conftest import adapter_tensors, identity_rows, pull, reference_adapter, trainer_settings, write_jsonl

from swiftmesh.clients.trainer import TrainerClient, build_spec
from swiftmesh.jobs.v1 import jobs_pb2
from swiftmesh.testing.services import ServiceProcess, start_in_process

pytestmark = pytest.mark.slow
S = jobs_pb2.JobState


def call(settings, fn, timeout=900):
    async def go():
        async with TrainerClient(settings) as t:
            return await fn(t)

    return asyncio.run(asyncio.wait_for(go(), timeout))


def test_kill9_restart_resumes_on_its_own_from_checkpoint(tmp_path, tiny_model_dir):
    from swiftmesh.clients.hub_blocking import materialize_sync
    from swiftmesh.jobkit.ray_runtime import default_temp_dir, ray_processes_using

    settings = trainer_settings(tmp_path / "data")
    data = write_jsonl(tmp_path / "identity.jsonl", identity_rows(16))
    hub = start_in_process("hub", settings)
    trainer = None
    ray_tmp = default_temp_dir(settings.trainer_state_dir)
    try:
        pull(settings, tiny_model_dir, "tiny")
        # `swiftmesh serve trainer` in a subprocess, so the test can kill -9 it.
        trainer = ServiceProcess("trainer", settings, log=tmp_path / "trainer1.log", new_session=False).wait_ready()
        spec = build_spec(model="models/tiny", datasets=[str(data)], tuner="lora", max_steps=16, learning_rate=5e-3,
                          per_device_train_batch_size=4, save_steps=4, logging_steps=1, lora_dropout=0.0)
        job = call(settings, lambda t: t.create_job(spec, job_id="killed"))
        deadline = time.time() + 600
        while time.time() < deadline:
            j = call(settings, lambda t: t.get(job.name))
            if j.checkpoints and j.checkpoints[-1].step >= 4 and j.progress.step >= 5:
                break
            assert j.state in (S.JOB_STATE_QUEUED, S.JOB_STATE_RUNNING), j
            time.sleep(0.3)
        else:
            raise AssertionError("the job made no checkpoint")
        assert j.progress.step < 16, "the job finished before the kill; make it longer"
        trainer.kill()
        kept = j.checkpoints[-1].step
        run_dir = Path(j.checkpoints[-1].path).parent
        # What a kill in the middle of writing the next checkpoint leaves: a partial directory.
        partial = run_dir / f"checkpoint-{kept + 1}"
        partial.mkdir(exist_ok=True)
        (partial / "adapter_model.safetensors").write_bytes(b"\0" * 10)
        trainer = ServiceProcess("trainer", settings, log=tmp_path / "trainer2.log", new_session=False).wait_ready()
        # No ResumeJob: the restarted service resumes the job itself.
        j = call(settings, lambda t: t.wait(job.name, timeout=900))
        assert j.state == S.JOB_STATE_SUCCEEDED, j.error.message
        assert j.progress.step == 16 and j.attempt == 2

        async def logs(t):
            return [e.log.message async for e in t.watch(job.name, follow=False) if e.HasField("log")]

        messages = call(settings, logs)
        assert any(f"restarted while the job was RUNNING; resuming from checkpoint step {kept}" in m
                   for m in messages), messages
        assert any(f"attempt 2: resumed from checkpoint step {kept}" in m for m in messages), messages
        assert any(f"checkpoint-{kept + 1}" in m and "never recorded" in m for m in messages), messages
        # Nothing half-written left: every checkpoint directory is a complete HF checkpoint.
        left = sorted(run_dir.glob("checkpoint-*"))
        assert left and all((d / "trainer_state.json").is_file() for d in left), left
        for d in left:
            adapter_tensors(d)  # loads
        (art,) = j.artifacts
        got = adapter_tensors(materialize_sync(settings, art.model))
        want = adapter_tensors(reference_adapter(tmp_path, tiny_model_dir, data, spec))
        assert got.keys() == want.keys()
        for k in want:
            diff = (got[k] - want[k]).abs().max().item()
            assert diff < 2e-3 * max(1.0, want[k].abs().max().item()), (k, diff)
    finally:
        if trainer is not None:
            trainer.stop(120)
        hub.stop()
        # The stopped trainer shut its Ray down; nothing of the killed one may linger either.
        left = ray_processes_using(ray_tmp) if os.path.isdir(ray_tmp) else []
        what = []
        for pid in left:
            try:
                what.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200])
            except OSError:
                pass
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    assert not left, f"Ray processes left behind: {what}"
