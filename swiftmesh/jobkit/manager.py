"""The job manager: create, run, watch, cancel, resume and delete jobs of registered kinds.

One :class:`JobManager` per service (trainer, aligner). It owns the job store
(:mod:`swiftmesh.jobkit.store`: ``<state_dir>/jobs.db`` or ``<service>.database_url``), the event
hub, the Ray runtime, one monitor thread per running job,
and the per-job directories (``<state_dir>/jobs/<id>/``: the plan's data rows and the
TensorBoard event files). Checkpoints live in Ray Train's storage
(``<storage_path>/<id>/checkpoint-<step>``, ``storage_path`` defaulting to
``<state_dir>/checkpoints``; set it to shared storage on a multi-node cluster).

The async methods never block the event loop; errors are ``swiftmesh.runtime.errors``
exceptions. Records are the domain types of :mod:`swiftmesh.jobkit.types`; the monitor thread of
each run is :class:`~swiftmesh.jobkit.runs.JobRun`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import threading
import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from swiftmesh.jobkit import states
from swiftmesh.jobkit.estimate import Estimate
from swiftmesh.jobkit.events import EventHub
from swiftmesh.jobkit.kinds import JobKind, JobPlan, KindRegistry, PrepareContext
from swiftmesh.jobkit.models import HubModelSource, ModelSource
from swiftmesh.jobkit.placement import PLACEMENT_LABEL, placement_strategy, worker_bundle
from swiftmesh.jobkit.ray_runtime import RayRuntime, default_temp_dir
from swiftmesh.jobkit.runs import SERVICE_STOPPED, JobRun
from swiftmesh.jobkit.store import JobStore, database_url
from swiftmesh.jobkit.types import (
    Job,
    JobError,
    JobEvent,
    JobState,
    LogLine,
    Progress,
    Resources,
    StateChange,
    now,
)
from swiftmesh.runtime.durable import write_atomic
from swiftmesh.runtime.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    SwiftMeshError,
)
from swiftmesh.runtime.paging import page

log = logging.getLogger("swiftmesh.jobkit")

JOB_ID_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


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
            state_dir, storage_path and database_url come from ``settings.<service>``.
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
        self.store = JobStore(database_url(getattr(section, "database_url", None), self.state_dir), service)
        self.events = EventHub(self.store)
        self._runs: dict[str, JobRun] = {}
        self._lock = threading.RLock()
        self._stopping = False
        self._started = False

    # Lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Recover after a restart: queued jobs start again; jobs that were running (a crash)
        or that the last stop interrupted (FAILED, reason SERVICE_STOPPED) resume on their own
        from their last checkpoint (from the beginning without one), with a log event saying
        which; cancelling ones become CANCELLED."""
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
        for job in self.store.list(states=[*states.ACTIVE, states.FAILED], limit=100_000):
            if job.name in self._runs:
                continue
            if job.state == states.FAILED:
                if job.error is None or job.error.reason != SERVICE_STOPPED:
                    continue  # failed on its own: ResumeJob decides
                step = job.last_checkpoint_step
                msg = f"the {self.service} service stopped while the job ran; " + (
                    f"resuming from checkpoint step {step}" if step else "restarting from the beginning (no checkpoint yet)")
                self.log_line(job.name, msg, "INFO", "driver")
                self.set_state(job.name, states.QUEUED, msg, clear_error=True)
                self._start_run(job.name, resume=True)
            elif job.state == states.QUEUED:
                step = job.last_checkpoint_step
                self.log_line(job.name, "service restarted; starting the queued job"
                              + (f" from checkpoint step {step}" if step else ""), "INFO", "driver")
                self._start_run(job.name, resume=bool(job.checkpoints))
            elif job.state == states.CANCELLING:
                self.set_state(job.name, states.CANCELLED, "cancelled (the service restarted meanwhile)")
            else:
                # Interrupted by a crash (kill -9, lost host): resume it through ResumeJob's path,
                # from the last checkpoint, or from the beginning when it never checkpointed.
                step = job.last_checkpoint_step
                msg = f"the {self.service} service restarted while the job was {states.name(job.state)}; " + (
                    f"resuming from checkpoint step {step}" if step else "restarting from the beginning (no checkpoint yet)"
                )
                self.log_line(job.name, msg, "WARNING", "driver")
                self.set_state(job.name, states.QUEUED, msg, clear_error=True)
                self._start_run(job.name, resume=True)

    async def stop(self) -> None:
        """Stop every running job (they become FAILED, reason SERVICE_STOPPED, and resume when
        the service starts again) and Ray."""
        self._stopping = True
        runs = list(self._runs.values())
        await asyncio.gather(*(asyncio.to_thread(r.interrupt) for r in runs))
        for r in runs:
            await asyncio.to_thread(r.thread.join, 30)
        await asyncio.to_thread(self.runtime.shutdown)
        self.store.close()

    def cluster_resources(self):
        """The Ray cluster's resources (starts or connects to Ray)."""
        return self.runtime.resources()

    # Create / estimate ---------------------------------------------------------------------
    def _kind_for(self, kind: str) -> JobKind:
        return self.kinds.get(kind)

    def _prepare_context(self, job: str = "", force: bool = False) -> PrepareContext:
        return PrepareContext(settings=self.settings, models=self.models, job=job, force=force,
                              cluster=self.cluster_resources)

    async def estimate(self, kind: str, spec: Any) -> Estimate:
        """The kind's estimate of ``spec`` (raises what the kind raises, e.g. InvalidArgument)."""
        k = self._kind_for(kind)
        return await asyncio.to_thread(k.estimate, spec, self._prepare_context())

    async def create(
        self,
        kind: str,
        spec: Any,
        *,
        job_id: str = "",
        labels: dict[str, str] | None = None,
        force: bool = False,
        validate_only: bool = False,
    ) -> Job:
        """Validate ``spec`` (the kind's domain spec) with its kind, store the job QUEUED and
        launch it on Ray; with ``validate_only`` return the job that would be created.

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
        created = now()
        job = Job(
            name=name,
            uid=uuid.uuid4().hex,
            kind=k.name,
            state=states.QUEUED if not validate_only else states.UNSPECIFIED,
            state_message="validated; not queued (validate_only)" if validate_only else "queued",
            spec=k.spec_to_json(spec),
            progress=Progress(total_steps=plan.total_steps),
            resources=Resources(
                num_workers=plan.num_workers,
                cpus_per_worker=plan.cpus_per_worker,
                gpus_per_worker=plan.gpus_per_worker,
                memory_bytes_per_worker=plan.memory_bytes_per_worker,
            ),
            labels=dict(labels or {}),
            tensorboard_dir=str(self.job_dir(name) / "tensorboard"),
            create_time=created,
            update_time=created,
        )
        if validate_only:
            return job
        queued = await asyncio.to_thread(self._persist_new, job, plan)
        self.events.deliver(queued)
        for note in plan.notes:  # "warning: ..." notes (e.g. ignore_columns' count) at WARNING level
            self.log_line(name, note, "WARNING" if note.startswith("warning:") else "INFO", "driver")
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

    def job_dir(self, name: str) -> Path:
        """``<state_dir>/jobs/<id>``: the job's data rows and TensorBoard files."""
        return self.state_dir / "jobs" / name.removeprefix("jobs/")

    def _persist_new(self, job: Job, plan: JobPlan) -> JobEvent:
        # The data rows are on disk before the record that points at them is committed.
        write_atomic(self.job_dir(job.name) / "data.json", json.dumps(plan.data))
        queued = JobEvent(job=job.name, state_change=StateChange(state=states.QUEUED, message="queued"))
        return self.store.insert(job, json.dumps(plan.to_json()), event=queued)

    def load_plan(self, name: str) -> JobPlan:
        """The plan stored with the job, with its data rows."""
        raw = self.store.plan(name)
        data_file = self.job_dir(name) / "data.json"
        data = json.loads(data_file.read_text()) if data_file.is_file() else {}
        return JobPlan.from_json(json.loads(raw or "{}"), data)

    # Queries -------------------------------------------------------------------------------
    async def get(self, name: str) -> Job:
        """The job ("jobs/x" or "x"); NotFound when there is none."""
        return await asyncio.to_thread(self.store.get, job_name(name))

    async def list(
        self, *, page_size: int = 50, page_token: str = "", states_: Iterable[int] = (), kinds: Iterable[str] = ()
    ) -> tuple[list[Job], str]:
        """A page of jobs, newest first, and the next page token ("" at the end).

        ``page_size`` 0 means 50 (at most 1000); a token only continues the query that made it
        (:mod:`swiftmesh.runtime.paging`). InvalidArgument for a negative size or a bad token.
        """
        states_, kinds = [int(s) for s in states_], list(kinds)
        pg = page(page_size, page_token, {"states": states_, "kinds": kinds})
        jobs = await asyncio.to_thread(self.store.list, states=states_, kinds=kinds, offset=pg.offset,
                                       limit=pg.size + 1)
        return jobs[:pg.size], pg.next_token(len(jobs) > pg.size)

    async def watch(self, name: str, *, start_sequence: int = 0, follow: bool = True) -> AsyncIterator[JobEvent]:
        """The job's events from ``start_sequence``, then (``follow``) live ones until it ends."""
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
    async def cancel(self, name: str) -> Job:
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
        job = await asyncio.to_thread(self.set_state, name, states.CANCELLING, "cancel requested")
        run = self._runs.get(name)
        if run is None:
            job = await asyncio.to_thread(self.set_state, name, states.CANCELLED, "cancelled")
        else:
            threading.Thread(target=run.cancel, name=f"cancel-{name}", daemon=True).start()
        return job

    async def resume(self, name: str) -> Job:
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
        step = job.last_checkpoint_step
        msg = f"resuming from checkpoint step {step}" if step else "restarting (no checkpoint yet)"
        job = await asyncio.to_thread(self.set_state, name, states.QUEUED, msg, clear_error=True)
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
            shutil.rmtree(self.job_dir(name), ignore_errors=True)
            shutil.rmtree(Path(self.storage_path) / name.removeprefix("jobs/"), ignore_errors=True)

        await asyncio.to_thread(rm)
        self.events.close_job(name)

    # Record updates (also used by the runs) ------------------------------------------------
    def _publish(self, name: str, **payload) -> JobEvent:
        return self.events.publish(JobEvent(job=name, **payload))

    def log_line(self, name: str, message: str, level: str = "INFO", source: str = "driver") -> None:
        """Add a line to the job's log (an event) and to the service's log."""
        log.log(getattr(logging, level, logging.INFO), "%s [%s] %s", name, source, message)
        self._publish(name, log=LogLine(level=level, message=message, source=source))

    def set_state(self, name: str, new: JobState, message: str = "", error: JobError | None = None, *,
                  clear_error: bool = False) -> Job:
        """Move the job to ``new`` (FailedPrecondition when the state machine forbids it), with its
        state-change event in the same transaction; ``error`` is recorded, ``clear_error`` drops
        the old one. Returns the new record."""
        with self._lock:
            prev = {}

            def mutate(j: Job) -> None:
                prev["state"] = j.state
                states.check_transition(name, j.state, new)
                j.state = JobState(new)
                j.state_message = message
                if new == states.RUNNING and not j.start_time:
                    j.start_time = now()
                if new in states.TERMINAL:
                    j.end_time = now()
                elif new == states.QUEUED:
                    j.end_time = 0.0
                if clear_error:
                    j.error = None
                if error is not None:
                    j.error = error

            job, ev = self.store.update(name, mutate, lambda j: JobEvent(job=name, state_change=StateChange(
                state=JobState(new), previous_state=prev["state"], message=message)))
            self.events.deliver(ev)
            return job

    def set_message(self, name: str, message: str) -> None:
        """Change the job's state message (no event)."""
        def mutate(j):
            j.state_message = message

        self.store.update(name, mutate)

    def _start_run(self, name: str, *, resume: bool, trace_context: dict[str, str] | None = None) -> None:
        with self._lock:
            if name in self._runs:
                return
            run = JobRun(self, name, resume=resume, trace_context=trace_context)
            self._runs[name] = run
        run.thread.start()

    def run_ended(self, name: str) -> None:
        """Called by a run's thread as it ends."""
        with self._lock:
            self._runs.pop(name, None)


def _trace_context() -> dict[str, str]:
    """The caller's W3C trace context (``traceparent``...), carried to the Ray workers so the
    spans of a run (its artifact upload into the hub) join the trace of CreateJob/ResumeJob."""
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier
