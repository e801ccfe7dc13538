"""The job manager: create, run, watch, cancel, resume and delete jobs of registered kinds.

One :class:`JobManager` per service (trainer, aligner). It owns the SQLite store
(``<state_dir>/jobs.db``), the event hub, the Ray runtime, one monitor thread per running job,
and the per-job directories (``<state_dir>/jobs/<id>/``: the plan's data rows and the
TensorBoard event files). Checkpoints live in Ray Train's storage
(``<storage_path>/<id>/checkpoint-<step>``, ``storage_path`` defaulting to
``<state_dir>/checkpoints``; set it to shared storage on a multi-node cluster).

All public methods are async and never block the event loop; errors are
``swiftmesh.runtime.errors`` exceptions.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2

from swiftmesh.jobkit import states
from swiftmesh.jobkit.events import EventHub
from swiftmesh.jobkit.kinds import JobKind, JobPlan, KindRegistry, PrepareContext
from swiftmesh.jobkit.launcher import RunRequest, launch
from swiftmesh.jobkit.models import HubModelSource, ModelSource
from swiftmesh.jobkit.placement import PLACEMENT_LABEL, placement_strategy, worker_bundle
from swiftmesh.jobkit.ray_runtime import RayRuntime, default_temp_dir
from swiftmesh.jobkit.run_monitor import LaunchedRun
from swiftmesh.jobkit.store import JobStore
from swiftmesh.jobkit.tensorboard import TensorBoardWriter
from swiftmesh.jobs.v1 import jobs_pb2, training_pb2
from swiftmesh.runtime.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, SwiftMeshError

log = logging.getLogger("swiftmesh.jobkit")

JOB_ID_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
POLL_S = 0.5
# How often a run that Ray has not placed yet is asked why (seconds).
WAIT_CHECK_S = 2.0
# Shortest interval between two "waiting for ..." lines in the job's log (seconds).
WAIT_LOG_S = 30.0


def job_name(name_or_id: str) -> str:
    """"jobs/x" for "x" or "jobs/x"; InvalidArgument for an empty or malformed id."""
    job_id = (name_or_id or "").strip().removeprefix("jobs/")
    if not JOB_ID_RE.match(job_id):
        raise InvalidArgument(
            f"invalid job name {name_or_id!r}: expected jobs/<id>, id matching {JOB_ID_RE.pattern}",
            field_violations=[("name", "must be jobs/<id> with a lower-case id of letters, digits and '-'")],
            reason="INVALID_JOB_NAME",
        )
    return f"jobs/{job_id}"


class JobManager:
    """Jobs of one service.

    Args:
        settings: the service's Settings.
        service: the section name ("trainer", "aligner"): ray_address, ray_num_cpus,
            state_dir and storage_path come from ``settings.<service>``.
        kinds: the JobKind instances this service runs.
        models: the model source (default: the hub at ``settings.hub.target``).
        runtime: the Ray runtime (default: from the settings).
    """

    def __init__(
        self,
        settings,
        service: str,
        kinds: Iterable[JobKind],
        *,
        models: ModelSource | None = None,
        runtime: RayRuntime | None = None,
    ) -> None:
        self.settings = settings
        self.service = service
        section = settings.endpoint(service)
        self.state_dir = Path(getattr(section, "state_dir", None) or settings.data_dir / service)
        self.kinds = KindRegistry(kinds)
        self.models: ModelSource = models if models is not None else HubModelSource(settings)
        self.runtime = runtime or RayRuntime(
            getattr(section, "ray_address", None),
            getattr(section, "ray_num_cpus", 0),
            temp_dir=default_temp_dir(self.state_dir),
        )
        self.storage_path = str(Path(getattr(section, "storage_path", None) or self.state_dir / "checkpoints").absolute())
        self.store = JobStore(self.state_dir / "jobs.db")
        self.events = EventHub(self.store)
        self._runs: dict[str, _Run] = {}
        self._lock = threading.RLock()
        self._stopping = False
        self._started = False

    # Lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Recover after a restart: queued jobs start again; jobs that were running become
        FAILED (reason INTERRUPTED) and resume on request; cancelling ones become CANCELLED."""
        self._started = True
        # Connect to Ray (or start the embedded head) now, on the event loop's thread and before
        # the server installs its SIGTERM/SIGINT handlers: Ray installs handlers of its own when
        # a driver connects from the main thread, and the server's must be the last word so a
        # SIGTERM drains the service (and stops the embedded Ray) instead of killing it.
        try:
            self.runtime.ensure()
        except Exception as e:  # noqa: BLE001  (jobs retry the connection when they launch)
            log.warning("Ray is not reachable yet (%s: %s); jobs will connect when they start", type(e).__name__, e)
        await asyncio.to_thread(self._recover)

    def _recover(self) -> None:
        for job in self.store.list(states=list(states.ACTIVE), limit=100_000):
            if job.name in self._runs:
                continue
            if job.state == states.QUEUED and not job.start_time.seconds:
                self._log(job.name, "service restarted; starting the queued job", "INFO", "driver")
                self._start_run(job.name, resume=bool(job.checkpoints))
            elif job.state == states.CANCELLING:
                self._set_state(job.name, states.CANCELLED, "cancelled (the service restarted meanwhile)")
            else:
                step = job.checkpoints[-1].step if job.checkpoints else 0
                msg = (
                    f"the {self.service} service stopped while the job was {states.name(job.state)}; "
                    + (f"ResumeJob continues from checkpoint step {step}" if step else "ResumeJob restarts it")
                )
                self._set_state(job.name, states.FAILED, msg, error=(code_pb2.ABORTED, "INTERRUPTED", msg))

    async def stop(self) -> None:
        """Stop every running job (they become FAILED, reason SERVICE_STOPPED, resumable) and Ray."""
        self._stopping = True
        runs = list(self._runs.values())
        await asyncio.gather(*(asyncio.to_thread(r.interrupt) for r in runs))
        for r in runs:
            await asyncio.to_thread(r.thread.join, 30)
        await asyncio.to_thread(self.runtime.shutdown)
        self.store.close()

    def cluster_resources(self):
        return self.runtime.resources()

    # Create / estimate ---------------------------------------------------------------------
    def _kind_for(self, kind: str) -> JobKind:
        return self.kinds.get(kind)

    def _prepare_context(self, job: str = "", force: bool = False) -> PrepareContext:
        return PrepareContext(settings=self.settings, models=self.models, job=job, force=force,
                              cluster=self.cluster_resources)

    async def estimate(self, kind: str, spec: Message) -> training_pb2.Estimate:
        k = self._kind_for(kind)
        return await asyncio.to_thread(k.estimate, spec, self._prepare_context())

    async def create(
        self,
        kind: str,
        spec: Message,
        *,
        job_id: str = "",
        labels: dict[str, str] | None = None,
        force: bool = False,
        validate_only: bool = False,
    ) -> jobs_pb2.Job:
        """Validate ``spec`` with its kind, store the job QUEUED and launch it on Ray.

        Raises what the kind's ``prepare`` raises (InvalidArgument, NotFound, ResourceExhausted),
        AlreadyExists for a taken job id, ResourceExhausted when the job asks for more CPUs/GPUs
        than the whole cluster has (unless ``force``).
        """
        k = self._kind_for(kind)
        name = job_name(job_id) if job_id else f"jobs/{kind.replace('_', '-')}-{uuid.uuid4().hex[:8]}"
        if not validate_only:
            try:
                self.store.get(name)
            except SwiftMeshError:
                pass
            else:
                from swiftmesh.runtime.errors import AlreadyExists

                raise AlreadyExists(f"job {name} already exists", reason="JOB_EXISTS", metadata={"job": name})
        ctx = self._prepare_context(name, force)
        plan: JobPlan = await asyncio.to_thread(k.prepare, spec, ctx)
        if plan.num_workers < 1:
            raise InvalidArgument("num_workers must be >= 1",
                                  field_violations=[("spec.distribution.num_workers", f"got {plan.num_workers}")])
        worker_bundle(plan.cpus_per_worker, plan.gpus_per_worker, plan.memory_bytes_per_worker)  # InvalidArgument
        if labels and labels.get(PLACEMENT_LABEL):
            plan.placement_strategy = placement_strategy(labels[PLACEMENT_LABEL])
        else:
            plan.placement_strategy = placement_strategy(plan.placement_strategy, "placement_strategy")
        if not force:
            await asyncio.to_thread(self._check_capacity, plan)
        job = jobs_pb2.Job(
            name=name,
            uid=uuid.uuid4().hex,
            kind=k.name,
            state=states.QUEUED if not validate_only else jobs_pb2.JOB_STATE_UNSPECIFIED,
            state_message="validated; not queued (validate_only)" if validate_only else "queued",
            resources=jobs_pb2.Resources(
                num_workers=plan.num_workers,
                cpus_per_worker=plan.cpus_per_worker,
                gpus_per_worker=plan.gpus_per_worker,
                memory_bytes_per_worker=plan.memory_bytes_per_worker,
            ),
            labels=labels or {},
            tensorboard_dir=str(self._job_dir(name) / "tensorboard"),
        )
        job.spec.Pack(spec)
        job.progress.total_steps = plan.total_steps
        job.create_time.GetCurrentTime()
        job.update_time.CopyFrom(job.create_time)
        if validate_only:
            return job
        await asyncio.to_thread(self._persist_new, job, plan)
        self._publish(name, state_change=jobs_pb2.StateChange(state=states.QUEUED, message="queued"))
        for note in plan.notes:
            self._log(name, note, "INFO", "driver")
        self._start_run(name, resume=False, trace_context=_trace_context())
        return self.store.get(name)

    def _check_capacity(self, plan: JobPlan) -> None:
        res = self.runtime.resources()
        need_cpu = plan.num_workers * plan.cpus_per_worker
        need_gpu = plan.num_workers * plan.gpus_per_worker
        if plan.placement_strategy == "STRICT_SPREAD" and plan.num_workers > res.num_nodes:
            raise ResourceExhausted(
                f"the job places its {plan.num_workers} workers each on its own node (STRICT_SPREAD); the Ray "
                f"cluster has {res.num_nodes} node{'' if res.num_nodes == 1 else 's'} (force=true queues it anyway)",
                reason="CLUSTER_TOO_SMALL",
                metadata={"needed_nodes": str(plan.num_workers), "cluster_nodes": str(res.num_nodes)},
            )
        if need_cpu > res.total_cpus + 1e-9 or need_gpu > res.total_gpus + 1e-9:
            raise ResourceExhausted(
                f"the job needs {plan.num_workers} workers x {plan.cpus_per_worker:g} CPUs"
                + (f" x {plan.gpus_per_worker:g} GPUs" if plan.gpus_per_worker else "")
                + f" = {need_cpu:g} CPUs{f', {need_gpu:g} GPUs' if need_gpu else ''}; the Ray cluster has "
                f"{res.total_cpus:g} CPUs and {res.total_gpus:g} GPUs in all (force=true queues it anyway)",
                reason="CLUSTER_TOO_SMALL",
                metadata={"needed_cpus": f"{need_cpu:g}", "cluster_cpus": f"{res.total_cpus:g}"},
            )

    def _job_dir(self, name: str) -> Path:
        return self.state_dir / "jobs" / name.removeprefix("jobs/")

    def _persist_new(self, job: jobs_pb2.Job, plan: JobPlan) -> None:
        d = self._job_dir(job.name)
        d.mkdir(parents=True, exist_ok=True)
        (d / "data.json").write_text(json.dumps(plan.data))
        self.store.insert(job, json.dumps(plan.to_json()))

    def _load_plan(self, name: str) -> JobPlan:
        raw = self.store.plan(name)
        data_file = self._job_dir(name) / "data.json"
        data = json.loads(data_file.read_text()) if data_file.is_file() else {}
        return JobPlan.from_json(json.loads(raw or "{}"), data)

    # Queries -------------------------------------------------------------------------------
    async def get(self, name: str) -> jobs_pb2.Job:
        return await asyncio.to_thread(self.store.get, job_name(name))

    async def list(
        self, *, page_size: int = 50, page_token: str = "", states_: Iterable[int] = (), kinds: Iterable[str] = ()
    ) -> tuple[list[jobs_pb2.Job], str]:
        """A page of jobs, newest first, and the next page token ("" at the end)."""
        if page_size < 0:
            raise InvalidArgument("page_size must be >= 0", field_violations=[("page_size", f"got {page_size}")])
        size = min(page_size or 50, 1000)
        offset = 0
        if page_token:
            try:
                offset = int(base64.urlsafe_b64decode(page_token.encode()).decode())
            except ValueError:
                raise InvalidArgument("invalid page_token", field_violations=[("page_token", "not from ListJobs")]) from None
        jobs = await asyncio.to_thread(
            self.store.list, states=list(states_), kinds=list(kinds), offset=offset, limit=size + 1
        )
        token = ""
        if len(jobs) > size:
            jobs = jobs[:size]
            token = base64.urlsafe_b64encode(str(offset + size).encode()).decode()
        return jobs, token

    async def watch(self, name: str, *, start_sequence: int = 0, follow: bool = True) -> AsyncIterator[jobs_pb2.JobEvent]:
        name = job_name(name)
        await self.get(name)  # NotFound

        def terminal() -> bool:
            try:
                return self.store.get(name).state in states.TERMINAL
            except SwiftMeshError:
                return True

        async for ev in self.events.watch(name, start_sequence=start_sequence, follow=follow, is_terminal=terminal):
            yield ev

    # Control -------------------------------------------------------------------------------
    async def cancel(self, name: str) -> jobs_pb2.Job:
        """QUEUED/RUNNING -> CANCELLING; the workers are aborted in the background and the job
        ends CANCELLED with its checkpoints. FailedPrecondition for a job that has ended."""
        name = job_name(name)
        job = await self.get(name)
        if job.state == states.CANCELLING:
            return job
        if job.state in states.TERMINAL:
            raise FailedPrecondition(
                f"job {name} has already ended ({states.name(job.state)})",
                reason="JOB_ENDED",
                metadata={"job": name, "state": states.name(job.state)},
            )
        job = await asyncio.to_thread(self._set_state, name, states.CANCELLING, "cancel requested")
        run = self._runs.get(name)
        if run is None:
            job = await asyncio.to_thread(self._set_state, name, states.CANCELLED, "cancelled")
        else:
            threading.Thread(target=run.cancel, name=f"cancel-{name}", daemon=True).start()
        return job

    async def resume(self, name: str) -> jobs_pb2.Job:
        """FAILED/CANCELLED -> QUEUED, restarting from the last checkpoint.
        FailedPrecondition for a queued, running or succeeded job."""
        name = job_name(name)
        job = await self.get(name)
        if job.state not in states.RESUMABLE or name in self._runs:
            raise FailedPrecondition(
                f"job {name} is {states.name(job.state)}; only FAILED or CANCELLED jobs can be resumed",
                reason="NOT_RESUMABLE",
                metadata={"job": name, "state": states.name(job.state)},
            )
        step = job.checkpoints[-1].step if job.checkpoints else 0

        def mutate(j):
            j.ClearField("error")

        await asyncio.to_thread(self.store.update, name, mutate)
        msg = f"resuming from checkpoint step {step}" if step else "restarting (no checkpoint yet)"
        job = await asyncio.to_thread(self._set_state, name, states.QUEUED, msg)
        self._start_run(name, resume=True, trace_context=_trace_context())
        return job

    async def delete(self, name: str) -> None:
        """Delete an ended job's record, data and checkpoints (hub artifacts stay)."""
        name = job_name(name)
        job = await self.get(name)
        if job.state not in states.TERMINAL or name in self._runs:
            raise FailedPrecondition(
                f"job {name} is {states.name(job.state)}; cancel it before deleting it",
                reason="JOB_ACTIVE",
                metadata={"job": name},
            )

        def rm():
            self.store.delete(name)
            shutil.rmtree(self._job_dir(name), ignore_errors=True)
            shutil.rmtree(Path(self.storage_path) / name.removeprefix("jobs/"), ignore_errors=True)

        await asyncio.to_thread(rm)
        self.events.close_job(name)

    # Internals -------------------------------------------------------------------------------
    def _publish(self, name: str, **payload) -> jobs_pb2.JobEvent:
        return self.events.publish(jobs_pb2.JobEvent(job=name, **payload))

    def _log(self, name: str, message: str, level: str = "INFO", source: str = "driver") -> None:
        log.log(getattr(logging, level, logging.INFO), "%s [%s] %s", name, source, message)
        self._publish(name, log=jobs_pb2.LogLine(level=level, message=message, source=source))

    def _set_state(
        self, name: str, new: int, message: str = "", error: tuple[int, str, str] | None = None
    ) -> jobs_pb2.Job:
        with self._lock:
            prev = {}

            def mutate(j: jobs_pb2.Job) -> None:
                prev["state"] = j.state
                states.check_transition(name, j.state, new)
                j.state = new
                j.state_message = message
                if new == states.RUNNING and not j.start_time.seconds:
                    j.start_time.GetCurrentTime()
                if new in states.TERMINAL:
                    j.end_time.GetCurrentTime()
                elif new == states.QUEUED:
                    j.ClearField("end_time")
                if error is not None:
                    j.error.CopyFrom(jobs_pb2.JobError(code=error[0], reason=error[1], message=error[2]))

            job = self.store.update(name, mutate)
            self._publish(
                name,
                state_change=jobs_pb2.StateChange(state=new, previous_state=prev["state"], message=message),
            )
            return job

    def _set_message(self, name: str, message: str) -> None:
        def mutate(j):
            j.state_message = message

        self.store.update(name, mutate)

    def _start_run(self, name: str, *, resume: bool, trace_context: dict[str, str] | None = None) -> None:
        with self._lock:
            if name in self._runs:
                return
            run = _Run(self, name, resume=resume, trace_context=trace_context)
            self._runs[name] = run
        run.thread.start()


class _Run:
    """Monitor thread of one launch: starts the run, turns worker events into job updates."""

    def __init__(self, mgr: JobManager, name: str, *, resume: bool, trace_context: dict[str, str] | None = None) -> None:
        self.mgr = mgr
        self.name = name
        self.resume = resume
        self.trace_context = trace_context or {}
        self.launched: LaunchedRun | None = None
        self.cancel_event = threading.Event()
        self.interrupt_event = threading.Event()
        self.thread = threading.Thread(target=self._main, name=f"job-{name}", daemon=True)
        self.tb = TensorBoardWriter(mgr._job_dir(name) / "tensorboard")
        self._pinned: list[str] = []
        self.fatal_error = ""
        self.keep = 2
        self.plan_total = 0
        self.waiting = ""  # the "waiting for ..." reason last shown ("" when none)
        self._waiting_logged_at = 0.0
        self._clear_checks = 0

    # Called from other threads.
    def cancel(self) -> None:
        self.cancel_event.set()
        launched = self.launched
        if launched is not None:
            launched.cancel()

    def interrupt(self) -> None:
        self.interrupt_event.set()
        launched = self.launched
        if launched is not None:
            launched.cancel()

    def _main(self) -> None:
        mgr, name = self.mgr, self.name
        result: dict[str, Any] | None = None
        try:
            job = mgr.store.get(name)
            plan = mgr._load_plan(name)
            self.keep = plan.checkpoints_to_keep
            self.plan_total = plan.total_steps
            kind = mgr.kinds.get(job.kind)
            mgr._set_message(name, "starting Ray" if mgr.runtime.embedded else "connecting to Ray")
            mgr.runtime.ensure()
            if self.cancel_event.is_set() or self.interrupt_event.is_set():
                result = {"status": "aborted"}
                return
            mgr._set_message(name, "starting workers")
            for m in plan.models:
                try:
                    mgr.models.pin(m, name)
                    self._pinned.append(m)
                except Exception:  # noqa: BLE001  (pinning is best effort)
                    log.debug("pin %s failed", m, exc_info=True)
            resume_from = ""
            if self.resume and job.checkpoints:
                last = job.checkpoints[-1].path
                if Path(last).is_dir():
                    resume_from = last
            req = RunRequest(
                job=name,
                kind=kind,
                plan_config=plan.config,
                data=plan.data,
                labels=dict(job.labels),
                settings=mgr.settings,
                models=mgr.models,
                num_workers=plan.num_workers,
                cpus_per_worker=plan.cpus_per_worker,
                gpus_per_worker=plan.gpus_per_worker,
                memory_bytes_per_worker=plan.memory_bytes_per_worker,
                storage_path=mgr.storage_path,
                max_failures=plan.max_failures,
                num_to_keep=plan.checkpoints_to_keep,
                resume_from=resume_from,
                attempt_offset=job.attempt,
                placement_strategy=plan.placement_strategy,
                service=mgr.service,
                trace_context=self.trace_context,
            )
            self.launched = launch(mgr.runtime, req)
            if self.cancel_event.is_set() or self.interrupt_event.is_set():
                self.launched.cancel()
            next_check = time.monotonic() + WAIT_CHECK_S / 2
            while True:
                for ev in self.launched.drain():
                    self._handle(ev)
                result = self.launched.wait(POLL_S)
                if result is not None:
                    for ev in self.launched.drain():
                        self._handle(ev)
                    break
                if time.monotonic() >= next_check:
                    self._check_waiting()
                    next_check = time.monotonic() + WAIT_CHECK_S
        except Exception as e:  # noqa: BLE001
            log.exception("job %s: launch failed", name)
            result = {"status": "error", "error": f"{type(e).__name__}: {e}", "type": "LaunchError"}
        finally:
            self._finish(result or {"status": "error", "error": "the run ended without a result"})

    def _check_waiting(self) -> None:
        """Show in Job.state_message (and, now and then, the job's log) why Ray has not placed
        the workers: before the first start (QUEUED) or while a restart waits for room (RUNNING)."""
        mgr, name = self.mgr, self.name
        if self.launched is None or self.cancel_event.is_set() or self.interrupt_event.is_set():
            return
        reason = self.launched.waiting_reason()
        try:
            job = mgr.store.get(name)
        except SwiftMeshError:
            return
        if job.state not in (states.QUEUED, states.RUNNING):
            return
        if reason:
            self._clear_checks = 0
            msg = reason if job.state == states.QUEUED else (
                f"a worker was lost; restarting from the last checkpoint once Ray has room: {reason}")
            if msg != job.state_message:
                mgr._set_message(name, msg)
            now = time.monotonic()
            if reason != self.waiting and (not self.waiting or now - self._waiting_logged_at >= WAIT_LOG_S):
                mgr._log(name, msg, "INFO", "driver")
                self._waiting_logged_at = now
            self.waiting = reason
        elif self.waiting:
            # Ray re-creates a placement group that waited too long: two clear checks in a row.
            self._clear_checks += 1
            if self._clear_checks >= 2:
                self.waiting = ""
                mgr._set_message(name, "resources reserved; starting workers" if job.state == states.QUEUED
                                 else "resources reserved; restarting workers")

    def _finish(self, result: dict[str, Any]) -> None:
        mgr, name = self.mgr, self.name
        try:
            if self.launched is not None:
                self.launched.close()
            for m in self._pinned:
                try:
                    mgr.models.unpin(m, name)
                except Exception:  # noqa: BLE001
                    pass
            self.tb.close()
            job = mgr.store.get(name)
            status = result.get("status")
            if self.fatal_error and status != "ok" and not self.cancel_event.is_set():
                result = {"status": "error", "error": self.fatal_error}
                status = "error"
            if self.interrupt_event.is_set() and status != "ok":
                msg = f"the {mgr.service} service stopped; ResumeJob continues from the last checkpoint"
                target = states.FAILED if job.state != states.CANCELLING else states.CANCELLED
                mgr._set_state(name, target, msg, error=(code_pb2.ABORTED, "SERVICE_STOPPED", msg) if target == states.FAILED else None)
            elif status == "ok":
                if job.state == states.QUEUED:
                    mgr._set_state(name, states.RUNNING, "running")
                mgr._set_state(name, states.SUCCEEDED, "succeeded")
            elif self.cancel_event.is_set() or job.state == states.CANCELLING or (status == "aborted" and not self.fatal_error):
                if job.state != states.CANCELLING:
                    mgr._set_state(name, states.CANCELLING, "cancel requested")
                step = job.checkpoints[-1].step if job.checkpoints else 0
                mgr._set_state(name, states.CANCELLED,
                               f"cancelled; kept checkpoint step {step}" if step else "cancelled")
            else:
                err = result.get("error", "unknown error")
                mgr._log(name, f"job failed: {err}", "ERROR", "driver")
                mgr._set_state(name, states.FAILED, err.splitlines()[-1][:500] if err else "failed",
                               error=(code_pb2.INTERNAL, "TRAINING_FAILED", err))
        except Exception:  # noqa: BLE001
            log.exception("job %s: finishing failed", name)
        finally:
            with mgr._lock:
                mgr._runs.pop(name, None)

    # Worker events -> job updates.
    def _handle(self, ev: dict[str, Any]) -> None:
        mgr, name = self.mgr, self.name
        t = ev.get("type")
        try:
            if t == "started":
                if ev.get("source") != "worker-0":
                    return
                attempt = int(ev.get("attempt", 1))

                def mutate(j):
                    j.attempt = max(j.attempt, attempt)

                job = mgr.store.update(name, mutate)
                self.waiting = ""
                if job.state == states.QUEUED:
                    mgr._set_state(name, states.RUNNING, "running")
                elif job.state == states.RUNNING and job.state_message != "running":
                    mgr._set_message(name, "running")
                rs = int(ev.get("resume_step", 0))
                if rs:
                    mgr._log(name, f"attempt {attempt}: resumed from checkpoint step {rs}", "INFO", "driver")
                elif attempt > 1:
                    mgr._log(name, f"attempt {attempt}: restarted from the beginning", "INFO", "driver")
            elif t == "metrics":
                self._metrics(ev)
            elif t == "checkpoint":
                ck = jobs_pb2.Checkpoint(step=int(ev["step"]), path=str(ev["path"]))
                ck.create_time.FromSeconds(int(ev.get("time", time.time())))
                keep = max(1, self.keep)

                def mutate(j):
                    kept = [c for c in j.checkpoints if c.step != ck.step] + [ck]
                    kept.sort(key=lambda c: c.step)
                    del j.checkpoints[:]
                    j.checkpoints.extend(kept[-keep:])

                mgr.store.update(name, mutate)
                mgr._publish(name, checkpoint=jobs_pb2.CheckpointSaved(checkpoint=ck))
            elif t == "fatal":
                if not self.fatal_error:
                    self.fatal_error = str(ev.get("error", "worker error"))
                    mgr._log(name, f"non-retryable error on {ev.get('source')}; stopping the run", "ERROR", "driver")
                    if self.launched is not None:
                        self.launched.cancel()
            elif t == "log":
                mgr._log(name, str(ev.get("message", "")), str(ev.get("level", "INFO")), str(ev.get("source", "worker")))
            elif t == "artifact":
                art = jobs_pb2.JobArtifact(model=str(ev["model"]), kind=str(ev.get("kind", "")))

                def mutate(j):
                    if all(a.model != art.model for a in j.artifacts):
                        j.artifacts.append(art)

                mgr.store.update(name, mutate)
                mgr._publish(name, artifact=art)
        except Exception:  # noqa: BLE001
            log.exception("job %s: bad worker event %r", name, ev)

    def _metrics(self, ev: dict[str, Any]) -> None:
        mgr, name = self.mgr, self.name
        step = int(ev.get("step", 0))
        total = int(ev.get("total_steps", 0)) or self.plan_total
        metrics = {k: float(v) for k, v in (ev.get("metrics") or {}).items()}
        progress = jobs_pb2.JobProgress(step=step, total_steps=total, epoch=float(ev.get("epoch", 0.0)))
        if total:
            progress.fraction = min(1.0, step / total)
        if ev.get("eta_seconds") is not None:
            progress.eta.FromNanoseconds(int(float(ev["eta_seconds"]) * 1e9))
        if ev.get("tokens_per_second") is not None:
            progress.tokens_per_second = float(ev["tokens_per_second"])

        def mutate(j):
            tps = j.progress.tokens_per_second
            j.progress.CopyFrom(progress)
            if not progress.tokens_per_second and tps:
                j.progress.tokens_per_second = tps
            for k, v in metrics.items():
                j.metrics[k] = v

        mgr.store.update(name, mutate)
        if metrics:
            self.tb.scalars(step, metrics)
        mgr._publish(
            name,
            metrics=jobs_pb2.MetricsReport(step=step, epoch=progress.epoch, metrics=metrics, progress=progress),
        )


def _trace_context() -> dict[str, str]:
    """The caller's W3C trace context (``traceparent``...), carried to the Ray workers so the
    spans of a run (its artifact upload into the hub) join the trace of CreateJob/ResumeJob."""
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def pack_spec(spec: Message) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(spec)
    return a
