"""Typed async client of ``swiftmesh.jobs.v1.JobService``, served by the trainer and the aligner.

    async with JobsClient(settings, settings.trainer.target) as jobs:
        job = await jobs.get("jobs/sft-1a2b")
        async for event in jobs.watch(job.name):
            ...
        job = await jobs.wait(job.name)          # until SUCCEEDED / FAILED / CANCELLED

Errors raise :mod:`swiftmesh.runtime.errors` exceptions (NotFound, FailedPrecondition, ...).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable

from swiftmesh.clients.base import ServiceClient
from swiftmesh.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from swiftmesh.runtime.client import DEFAULT_STREAM_TIMEOUT_S, raise_domain_errors
from swiftmesh.runtime.config import Settings
from swiftmesh.runtime.errors import DeadlineExceeded

__all__ = ["JobsClient", "job_resource_name", "state_name", "TERMINAL_STATES"]

TERMINAL_STATES = frozenset({jobs_pb2.JOB_STATE_SUCCEEDED, jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_CANCELLED})


def job_resource_name(name: str) -> str:
    """"x" or "jobs/x" -> "jobs/x"."""
    name = (name or "").strip()
    return name if name.startswith("jobs/") else f"jobs/{name}"


def state_name(state: int) -> str:
    """"RUNNING" for JOB_STATE_RUNNING."""
    return jobs_pb2.JobState.Name(state).removeprefix("JOB_STATE_")


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
        out: list[jobs_pb2.Job] = []
        token = ""
        while True:
            with raise_domain_errors():
                resp = await self.jobs_stub.ListJobs(
                    jobs_pb2.ListJobsRequest(page_size=page_size, page_token=token, states=list(states), kinds=list(kinds))
                )
            out.extend(resp.jobs)
            token = resp.next_page_token
            if not token or not all_pages:
                return out

    async def cancel(self, name: str) -> jobs_pb2.Job:
        """Request cancellation (the job goes CANCELLING, then CANCELLED)."""
        with raise_domain_errors():
            return await self.jobs_stub.CancelJob(jobs_pb2.CancelJobRequest(name=job_resource_name(name)))

    async def resume(self, name: str) -> jobs_pb2.Job:
        """Resume a FAILED or CANCELLED job from its last checkpoint."""
        with raise_domain_errors():
            return await self.jobs_stub.ResumeJob(jobs_pb2.ResumeJobRequest(name=job_resource_name(name)))

    async def delete(self, name: str) -> None:
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
