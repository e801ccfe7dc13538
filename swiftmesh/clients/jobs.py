"""Typed async client of ``swiftmesh.jobs.v1.JobService``, served by the trainer and the aligner,
and :class:`JobServiceClient`, the base of the clients of services that create jobs (their
CreateJob and EstimateJob on top of the JobService methods).

    async with JobsClient(settings, settings.trainer.target) as jobs:
        job = await jobs.get("jobs/sft-1a2b")
        async for event in jobs.watch(job.name):
            ...
        job = await jobs.wait(job.name)          # until SUCCEEDED / FAILED / CANCELLED

:data:`TUNERS`, :data:`STRATEGIES` and :func:`tuning_fields` are the parts of a spec the
trainer's and the aligner's ``build_spec`` share.

Errors raise :mod:`swiftmesh.runtime.errors` exceptions (NotFound, FailedPrecondition, ...).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, ClassVar

from google.protobuf.message import Message

from swiftmesh.clients import base
from swiftmesh.clients.base import ServiceClient
from swiftmesh.jobs.v1 import jobs_pb2, jobs_pb2_grpc, training_pb2
from swiftmesh.runtime.client import DEFAULT_STREAM_TIMEOUT_S, raise_domain_errors
from swiftmesh.runtime.config import Settings
from swiftmesh.runtime.errors import DeadlineExceeded, InvalidArgument

__all__ = ["STRATEGIES", "TERMINAL_STATES", "TUNERS", "JobServiceClient", "JobsClient", "job_resource_name",
           "state_name", "tuning_fields"]

TUNERS = {
    "full": training_pb2.TUNER_FULL,
    "lora": training_pb2.TUNER_LORA,
    "qlora": training_pb2.TUNER_QLORA,
    "dora": training_pb2.TUNER_DORA,
    "rslora": training_pb2.TUNER_RSLORA,
    "lora+": training_pb2.TUNER_LORA_PLUS,
    "lora_plus": training_pb2.TUNER_LORA_PLUS,
}
STRATEGIES = {
    "none": training_pb2.DISTRIBUTION_STRATEGY_NONE,
    "ddp": training_pb2.DISTRIBUTION_STRATEGY_DDP,
    "zero2": training_pb2.DISTRIBUTION_STRATEGY_ZERO2,
    "zero3": training_pb2.DISTRIBUTION_STRATEGY_ZERO3,
    "zero3_offload": training_pb2.DISTRIBUTION_STRATEGY_ZERO3_OFFLOAD,
}
ARG_FIELDS = frozenset(f.name for f in training_pb2.TrainingArguments.DESCRIPTOR.fields)
LORA_FIELDS = frozenset(f.name for f in training_pb2.LoraConfig.DESCRIPTOR.fields)

TERMINAL_STATES = frozenset({jobs_pb2.JOB_STATE_SUCCEEDED, jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_CANCELLED})


def job_resource_name(name: str) -> str:
    """"x" or "jobs/x" -> "jobs/x"."""
    name = (name or "").strip()
    return name if name.startswith("jobs/") else f"jobs/{name}"


def state_name(state: int) -> str:
    """"RUNNING" for JOB_STATE_RUNNING."""
    return jobs_pb2.JobState.Name(state).removeprefix("JOB_STATE_")


def set_field(msg: Message, k: str, v: Any) -> None:
    """``msg.k = v``; a repeated field is extended (with ``[v]`` for a string)."""
    fd = msg.DESCRIPTOR.fields_by_name[k]
    if fd.is_repeated:
        getattr(msg, k).extend([v] if isinstance(v, str) else list(v))
    else:
        setattr(msg, k, v)


def tuning_fields(
    spec: Message,
    *,
    model: str,
    datasets: Sequence[str],
    tuner: str,
    strategy: str,
    num_workers: int,
    cpus_per_worker: float,
    gpus_per_worker: float,
    memory_bytes_per_worker: int,
    kwargs: Mapping[str, Any],
) -> dict[str, Any]:
    """Fill the fields a TrainingSpec and an AlignmentSpec share (model, tuner, datasets,
    distribution; ``kwargs`` that are TrainingArguments or LoraConfig fields into ``spec.args`` /
    ``spec.lora``; ``None`` values skipped). Returns the ``kwargs`` left over.

    Raises InvalidArgument for an unknown tuner or strategy."""
    if tuner not in TUNERS:
        raise InvalidArgument(f"unknown tuner {tuner!r}; one of {sorted(TUNERS)}", field_violations=[("tuner", tuner)])
    if strategy not in STRATEGIES:
        raise InvalidArgument(f"unknown strategy {strategy!r}; one of {sorted(STRATEGIES)}",
                              field_violations=[("strategy", strategy)])
    spec.model = model if model.startswith("models/") else f"models/{model}"
    spec.tuner = TUNERS[tuner]
    spec.datasets.extend(datasets)
    spec.distribution.CopyFrom(training_pb2.Distribution(
        strategy=STRATEGIES[strategy], num_workers=num_workers, cpus_per_worker=cpus_per_worker,
        gpus_per_worker=gpus_per_worker, memory_bytes_per_worker=memory_bytes_per_worker,
    ))
    rest = {}
    for k, v in kwargs.items():
        if v is None:
            continue
        if k in ARG_FIELDS:
            set_field(spec.args, k, v)
        elif k in LORA_FIELDS:
            set_field(spec.lora, k, v)
        else:
            rest[k] = v
    return rest


class JobsClient(ServiceClient):
    """Async JobService client. Use as ``async with JobsClient(settings, target) as jobs:``.

    Args:
        settings: SwiftMesh settings (deadline, auth token, TLS).
        target: "host:port" of a trainer or aligner (default ``settings.trainer.target``).
    """

    def __init__(self, settings: Settings, target: str | None = None) -> None:
        super().__init__(settings, target or settings.trainer.target)
        self._jobs: jobs_pb2_grpc.JobServiceStub | None = None

    def _open(self) -> None:
        self._jobs = jobs_pb2_grpc.JobServiceStub(self._channel)

    @property
    def jobs_stub(self) -> jobs_pb2_grpc.JobServiceStub:
        """The JobService stub (RuntimeError outside ``async with``)."""
        if self._jobs is None:
            raise RuntimeError(f"{type(self).__name__} is not open: use `async with`")
        return self._jobs

    async def get(self, name: str) -> jobs_pb2.Job:
        """The job (NotFound if it does not exist)."""
        with raise_domain_errors():
            return await self.jobs_stub.GetJob(jobs_pb2.GetJobRequest(name=job_resource_name(name)))

    async def list(
        self, *, states: Iterable[int] = (), kinds: Iterable[str] = (), page_size: int = 0, all_pages: bool = True
    ) -> list[jobs_pb2.Job]:
        """Jobs newest first, filtered by state and kind (every page unless ``all_pages`` is False)."""
        states, kinds = list(states), list(kinds)
        return await base.all_pages(
            lambda token: self.jobs_stub.ListJobs(
                jobs_pb2.ListJobsRequest(page_size=page_size, page_token=token, states=states, kinds=kinds)),
            "jobs", first_only=not all_pages)

    async def cancel(self, name: str) -> jobs_pb2.Job:
        """Request cancellation (the job goes CANCELLING, then CANCELLED)."""
        with raise_domain_errors():
            return await self.jobs_stub.CancelJob(jobs_pb2.CancelJobRequest(name=job_resource_name(name)))

    async def resume(self, name: str) -> jobs_pb2.Job:
        """Resume a FAILED or CANCELLED job from its last checkpoint."""
        with raise_domain_errors():
            return await self.jobs_stub.ResumeJob(jobs_pb2.ResumeJobRequest(name=job_resource_name(name)))

    async def delete(self, name: str) -> None:
        """Delete an ended job (FailedPrecondition while it is active)."""
        with raise_domain_errors():
            await self.jobs_stub.DeleteJob(jobs_pb2.DeleteJobRequest(name=job_resource_name(name)))

    async def watch(
        self, name: str, *, start_sequence: int = 0, follow: bool = True
    ) -> AsyncIterator[jobs_pb2.JobEvent]:
        """The job's events from ``start_sequence``; with ``follow``, live until the job ends."""
        req = jobs_pb2.WatchJobRequest(name=job_resource_name(name), start_sequence=start_sequence, follow=follow)
        with raise_domain_errors():
            async for ev in self.jobs_stub.WatchJob(req, timeout=DEFAULT_STREAM_TIMEOUT_S):
                yield ev

    async def wait(self, name: str, *, timeout: float | None = None, poll_s: float = 1.0) -> jobs_pb2.Job:
        """Poll until the job is SUCCEEDED, FAILED or CANCELLED; DeadlineExceeded after ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = await self.get(name)
            if job.state in TERMINAL_STATES:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise DeadlineExceeded(f"{job.name} is still {state_name(job.state)} after {timeout:.0f} s")
            await asyncio.sleep(poll_s)


class JobServiceClient(JobsClient):
    """The client of a service that creates its own kind of job: its ``CreateJob`` and
    ``EstimateJob`` plus the JobService methods. Subclasses name the service:

    Class attributes:
        section: the settings section of the service ("trainer", "aligner"): the default target.
        stub_class: the generated stub of the service.
        create_request / estimate_request: its CreateJobRequest / EstimateJobRequest messages.
    """

    section: ClassVar[str]
    stub_class: ClassVar[type]
    create_request: ClassVar[type[Message]]
    estimate_request: ClassVar[type[Message]]

    def __init__(self, settings: Settings, target: str | None = None) -> None:
        super().__init__(settings, target or settings.endpoint(self.section).target)
        self._service = None

    def _open(self) -> None:
        super()._open()
        self._service = self.stub_class(self._channel)

    @property
    def service_stub(self):
        """The service's own stub (RuntimeError outside ``async with``)."""
        if self._service is None:
            raise RuntimeError(f"{type(self).__name__} is not open: use `async with {type(self).__name__}(settings) as c:`")
        return self._service

    async def create_job(
        self,
        spec: Message,
        *,
        job_id: str = "",
        labels: Mapping[str, str] | None = None,
        force: bool = False,
        validate_only: bool = False,
        timeout: float = 600.0,
    ) -> jobs_pb2.Job:
        """Validate and queue a job (its data is read and checked before this returns; ``timeout`` s).

        Raises InvalidArgument naming the spec field (or dataset file and row), NotFound for a
        model the hub lacks, AlreadyExists for a taken job id, ResourceExhausted when it does not fit."""
        req = self.create_request(spec=spec, job_id=job_id.removeprefix("jobs/"), labels=dict(labels or {}),
                                  force=force, validate_only=validate_only)
        with raise_domain_errors():
            return await self.service_stub.CreateJob(req, timeout=timeout)

    async def estimate(self, spec: Message, *, timeout: float = 600.0) -> training_pb2.Estimate:
        """Memory per worker and time, without running anything (``timeout`` s)."""
        with raise_domain_errors():
            return await self.service_stub.EstimateJob(self.estimate_request(spec=spec), timeout=timeout)
