"""JobManager on a real (embedded, 2-CPU) Ray with the toy kind: lifecycle, events, checkpoints,
TensorBoard, artifacts, cancel freeing Ray's CPUs, resume after cancel, restart recovery.
(Automatic restart on worker failure is tested with the real SFT kind in tests/trainer.)"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from swiftmesh.jobkit import JobManager, LocalModelSource, states
from swiftmesh.jobkit.ray_runtime import RayRuntime
from swiftmesh.jobkit.tensorboard import read_scalars
from swiftmesh.jobkit.testing import ToyKind
from swiftmesh.jobkit.types import Checkpoint, Job, JobError
from swiftmesh.runtime.errors import FailedPrecondition, InvalidArgument, ResourceExhausted

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def collector():
    from swiftmesh.testing.otlp import OtlpCollector

    c = OtlpCollector().start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def ray_runtime(collector):
    # The workers export their spans to the collector: the OTEL_* variables present when Ray
    # starts go into the workers' runtime env (this process itself keeps exporting nowhere).
    saved = {k: os.environ.get(k) for k in collector.env()}
    os.environ.update(collector.env())
    try:
        rt = RayRuntime(None, num_cpus=2)
        rt.ensure()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    yield rt
    rt.shutdown()


@pytest.fixture
def manager(make_settings, tmp_path, ray_runtime):
    settings = make_settings()
    models = LocalModelSource(tmp_path / "models")
    mgr = JobManager(settings, "trainer", [ToyKind()], models=models, runtime=ray_runtime)
    mgr.runtime_shutdown = False
    yield mgr
    for r in list(mgr._runs.values()):
        r.cancel()
        r.thread.join(30)
    mgr.store.close()


def spec(**kw) -> dict:
    return dict(kw)


async def wait_state(mgr, name, wanted, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = await mgr.get(name)
        if job.state in wanted:
            return job
        await asyncio.sleep(0.25)
    raise AssertionError(f"{name} still {states.name(job.state)}: {job.state_message} {job.error}")


async def test_toy_job_lifecycle_events_checkpoints_artifact(manager, tmp_path):
    job = await manager.create("toy", spec(steps=8, save_steps=3, output="models/toy-out",
                                           notes=["warning: ignore_columns dropped 'x' from 2 rows of d.jsonl"]),
                               job_id="toy-ok")
    assert job.state == states.QUEUED
    events = [ev async for ev in manager.watch(job.name, follow=True)]
    job = await manager.get(job.name)
    assert job.state == states.SUCCEEDED, job.error
    seen_states = [e.state_change.state for e in events if e.state_change is not None]
    assert seen_states == [states.QUEUED, states.RUNNING, states.SUCCEEDED]
    losses = [e.metrics.metrics["train/loss"] for e in events if e.metrics is not None and "train/loss" in e.metrics.metrics]
    assert len(losses) == 8 and losses[-1] < losses[0] / 2
    # The plan's notes are driver log lines; a "warning:" note (issue 19's ignore_columns count) is a WARNING.
    notes = [(e.log.level, e.log.message) for e in events if e.log is not None and e.log.source == "driver"]
    assert ("INFO", "toy job: 8 steps") in notes
    assert ("WARNING", "warning: ignore_columns dropped 'x' from 2 rows of d.jsonl") in notes
    assert [c.step for c in job.checkpoints] == [6, 8]  # last K=2 of 3, 6, 8
    assert [e.checkpoint.step for e in events if e.checkpoint is not None] == [3, 6, 8]
    assert job.progress.step == 8 and job.progress.total_steps == 8 and job.progress.fraction == 1.0
    assert [(a.model, a.kind) for a in job.artifacts] == [("models/toy-out", "full")]
    assert manager.models.get("models/toy-out").format == "full"
    sequences = [e.sequence for e in events]
    assert sequences == sorted(sequences) and sequences[0] == 1
    tb = read_scalars(job.tensorboard_dir)
    assert [s for s, _ in tb["train/loss"]] == list(range(1, 9))
    assert job.attempt == 1
    with pytest.raises(FailedPrecondition):
        await manager.cancel(job.name)
    with pytest.raises(FailedPrecondition):
        await manager.resume(job.name)


async def test_cancel_frees_cpus_and_resume_finishes(manager, ray_runtime):
    import ray

    job = await manager.create("toy", spec(steps=200, save_steps=2, step_seconds=0.2, num_workers=2), job_id="toy-cancel")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        j = await manager.get(job.name)
        if j.state == states.RUNNING and len(j.checkpoints) >= 1:
            break
        await asyncio.sleep(0.25)
    assert ray.available_resources().get("CPU", 0.0) == 0.0
    t0 = time.monotonic()
    j = await manager.cancel(job.name)
    assert j.state == states.CANCELLING
    while ray.available_resources().get("CPU", 0.0) < 2.0:
        assert time.monotonic() - t0 < 10.0, "Ray CPUs not freed within 10 s of CancelJob"
        await asyncio.sleep(0.1)
    j = await wait_state(manager, job.name, {states.CANCELLED}, timeout=30)
    assert j.checkpoints, "the cancelled job keeps its last checkpoint"
    kept = j.checkpoints[-1].step
    resumed = await manager.resume(job.name)
    assert resumed.state == states.QUEUED
    # Let it run a little, then check it started from the kept checkpoint; cancel again.
    j = await wait_state(manager, job.name, {states.RUNNING})
    assert j.attempt == 2
    for _ in range(40):
        logs = [e.log.message async for e in manager.watch(job.name, follow=False) if e.log is not None]
        if any(f"resumed from checkpoint step {kept}" in m for m in logs):
            break
        await asyncio.sleep(0.25)
    assert any(f"resumed from checkpoint step {kept}" in m for m in logs), logs[-10:]
    await manager.cancel(job.name)
    await wait_state(manager, job.name, {states.CANCELLED}, timeout=30)


async def test_validation_and_capacity_errors(manager):
    with pytest.raises(InvalidArgument):
        await manager.create("toy", spec(steps=0))
    with pytest.raises(InvalidArgument):
        await manager.create("nope", spec(steps=1))
    with pytest.raises(ResourceExhausted, match="CPUs"):
        await manager.create("toy", spec(steps=1, num_workers=5))
    with pytest.raises(InvalidArgument):
        await manager.create("toy", spec(steps=1), job_id="Bad_Name")
    v = await manager.create("toy", spec(steps=1), job_id="toy-dry", validate_only=True)
    assert v.name == "jobs/toy-dry"
    jobs, _ = await manager.list()
    assert "jobs/toy-dry" not in [j.name for j in jobs]


async def test_restart_resumes_running_jobs_on_its_own(make_settings, tmp_path, ray_runtime):
    settings = make_settings()
    models = LocalModelSource(tmp_path / "m")
    mgr = JobManager(settings, "trainer", [ToyKind()], models=models, runtime=ray_runtime)
    plan = ToyKind().prepare({"steps": 2}, None)
    j = Job(name="jobs/was-running", uid="u", kind="toy", state=states.RUNNING, create_time=time.time(),
            checkpoints=[Checkpoint(step=4, path=str(tmp_path / "nowhere"))])
    mgr._persist_new(j, plan)  # as CreateJob stored it, then the crash
    # One the last (graceful) stop interrupted, and one that failed on its own.
    stopped = JobError(10, "SERVICE_STOPPED", "the trainer service stopped")
    mgr._persist_new(Job(name="jobs/was-stopped", uid="s", kind="toy", state=states.FAILED, error=stopped,
                         create_time=time.time()), plan)
    mgr._persist_new(Job(name="jobs/failed", uid="f", kind="toy", state=states.FAILED, create_time=time.time(),
                         error=JobError(13, "TRAINING_FAILED", "boom")), plan)
    mgr.store.close()
    mgr2 = JobManager(settings, "trainer", [ToyKind()], models=models, runtime=ray_runtime)
    await mgr2.start()
    # The stopped one is queued again on its own (cancelled here, to leave the CPUs to the other).
    job = await mgr2.get("jobs/was-stopped")
    assert job.state in (states.QUEUED, states.RUNNING) and job.error is None, job
    logs = [e.log.message async for e in mgr2.watch(job.name, follow=False) if e.log is not None]
    assert any("service stopped while the job ran; restarting from the beginning" in m for m in logs), logs
    await mgr2.cancel(job.name)
    assert (await mgr2.get("jobs/failed")).state == states.FAILED  # ResumeJob decides for that one
    job = await wait_state(mgr2, "jobs/was-running", {states.SUCCEEDED, states.FAILED})
    # Not failed by the crash: resumed without a ResumeJob (the checkpoint is gone, so the toy
    # job runs from the beginning) and the event log says why it was restarted.
    assert job.state == states.SUCCEEDED, job.error
    logs = [e.log.message async for e in mgr2.watch(job.name, follow=False) if e.log is not None]
    assert any("restarted while the job was RUNNING; resuming from checkpoint step 4" in m for m in logs), logs
    await wait_state(mgr2, "jobs/was-stopped", {states.CANCELLED})
    for r in list(mgr2._runs.values()):  # not mgr2.stop(): it would shut the module's Ray down
        r.thread.join(30)
    mgr2.store.close()


async def test_artifact_upload_joins_the_create_job_trace(manager, collector):
    from opentelemetry import trace

    from swiftmesh.runtime.telemetry import setup_tracing

    setup_tracing("test")
    with trace.get_tracer("test").start_as_current_span("CreateJob") as span:
        job = await manager.create("toy", spec(steps=2, output="models/toy-traced"), job_id="toy-traced")
    trace_id = format(span.get_span_context().trace_id, "032x")
    job = await wait_state(manager, job.name, {states.SUCCEEDED, states.FAILED})
    assert job.state == states.SUCCEEDED, job.error
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        uploads = [s for s in collector.traces().get(trace_id, []) if s.name == "job.upload_artifacts"]
        if uploads:
            break
        await asyncio.sleep(0.5)
    assert uploads, f"no upload span in trace {trace_id}: {[(s.name, s.trace_id) for s in collector.spans]}"
    assert uploads[0].service == "swiftmesh-trainer"
    assert uploads[0].parent_span_id == format(span.get_span_context().span_id, "016x")
    assert ("swiftmesh.job", "jobs/toy-traced") in uploads[0].attributes


def test_a_new_run_ends_the_driver_a_dead_service_left_running(make_settings, tmp_path, ray_runtime):
    """A run whose service died can outlive it for a while on a shared cluster (its Ray job not torn
    down yet). The next launch of the same job finds its driver by name and ends it, so the
    resources it holds (here: every CPU of the cluster) go to the new run at once."""
    from swiftmesh.jobkit.launcher import RunRequest, driver_name, launch

    settings = make_settings()
    kind = ToyKind()

    def request(steps: int) -> RunRequest:
        plan = kind.prepare({"steps": steps, "step_seconds": 0.05, "save_steps": 10_000}, None)
        return RunRequest(job="jobs/orphaned", kind=kind, plan_config=plan.config, data=plan.data, labels={},
                          settings=settings, models=LocalModelSource(tmp_path / "m"), num_workers=1,
                          cpus_per_worker=2.0, gpus_per_worker=0.0, memory_bytes_per_worker=0,
                          storage_path=str(tmp_path / "ckpt"), max_failures=0, num_to_keep=1, service="trainer")

    old = launch(ray_runtime, request(4000))  # 200 s on both CPUs of the cluster
    deadline = time.monotonic() + 120
    while not any(e.get("type") == "metrics" for e in old.drain()):
        assert time.monotonic() < deadline, "the first run did not start"
        assert old.wait(0.5) is None
    import ray

    assert ray.get_actor(driver_name("trainer", "jobs/orphaned")) is not None
    new = launch(ray_runtime, request(2))  # the dead service's run is not cancelled by anyone
    try:
        result = None
        deadline = time.monotonic() + 90
        while result is None and time.monotonic() < deadline:
            new.drain()
            result = new.wait(1.0)
        assert result is not None and result["status"] == "ok", result
        assert old.wait(30) is not None  # ended, not still training
    finally:
        old.cancel()
        new.close()
        old.close()
