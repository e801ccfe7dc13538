"""TrainerService servicer: proto <-> domain only (CreateJob, EstimateJob).

The generic job methods (Get, List, Cancel, Resume, Delete, Watch) are
:class:`swiftmesh.jobkit.JobServicer` over the same :class:`~swiftmesh.jobkit.JobManager`, with
:func:`spec_proto` turning a stored spec back into ``swiftmesh.trainer.v1.TrainingSpec``.
"""

from __future__ import annotations

from typing import Any

from swiftmesh.jobkit import JobManager
from swiftmesh.jobkit.servicer import estimate_to_proto, job_to_proto, spec_from_proto, spec_to_proto
from swiftmesh.jobs.v1 import jobs_pb2, training_pb2
from swiftmesh.runtime.errors import InvalidArgument
from swiftmesh.trainer.v1 import trainer_pb2, trainer_pb2_grpc

from .spec import TrainingSpec

TASKS = {trainer_pb2.TASK_SFT: "sft", trainer_pb2.TASK_PT: "pt", trainer_pb2.TASK_MERGE: "merge"}
TASK_ENUMS = {v: k for k, v in TASKS.items()}


def training_spec(msg: trainer_pb2.TrainingSpec) -> TrainingSpec:
    """The domain spec of a request's ``TrainingSpec``; InvalidArgument when ``task`` is unset or unknown."""
    try:
        task = TASKS[msg.task]
    except KeyError:
        raise InvalidArgument(
            "spec.task is required: TASK_SFT, TASK_PT or TASK_MERGE",
            field_violations=[("spec.task", f"got {msg.task}")],
            reason="BAD_SPEC",
        ) from None
    spec = spec_from_proto(msg, TrainingSpec, skip=("task",))
    spec.task = task
    return spec


def training_spec_proto(spec: TrainingSpec) -> trainer_pb2.TrainingSpec:
    """The proto of a domain spec (the inverse of :func:`training_spec`)."""
    msg = spec_to_proto(spec, trainer_pb2.TrainingSpec(), skip=("task",))
    msg.task = TASK_ENUMS.get(spec.task, trainer_pb2.TASK_UNSPECIFIED)
    return msg


def spec_proto(kind: str, spec: dict[str, Any]) -> trainer_pb2.TrainingSpec:
    """A job's stored spec JSON as the proto packed into ``Job.spec``."""
    return training_spec_proto(TrainingSpec.from_json(spec))


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    """CreateJob and EstimateJob: the spec translated, the kind its task."""

    def __init__(self, manager: JobManager) -> None:
        self.manager = manager

    async def CreateJob(self, request: trainer_pb2.CreateJobRequest, context) -> jobs_pb2.Job:
        spec = training_spec(request.spec)
        job = await self.manager.create(
            spec.task,
            spec,
            job_id=request.job_id,
            labels=dict(request.labels),
            force=request.force,
            validate_only=request.validate_only,
        )
        return job_to_proto(job, spec_proto)

    async def EstimateJob(self, request: trainer_pb2.EstimateJobRequest, context) -> training_pb2.Estimate:
        spec = training_spec(request.spec)
        return estimate_to_proto(await self.manager.estimate(spec.task, spec))
