"""TrainerService servicer: proto <-> domain only (CreateJob, EstimateJob).

The generic job methods (Get, List, Cancel, Resume, Delete, Watch) are
:class:`swiftmesh.jobkit.JobServicer` over the same :class:`~swiftmesh.jobkit.JobManager`, with
:data:`SPEC` turning a stored spec back into ``swiftmesh.trainer.v1.TrainingSpec``.
"""

from __future__ import annotations

from swiftmesh.jobkit import JobManager
from swiftmesh.jobkit.servicer import SpecTranslation, create_job, estimate_job
from swiftmesh.jobs.v1 import jobs_pb2, training_pb2
from swiftmesh.trainer.v1 import trainer_pb2, trainer_pb2_grpc

from .spec import TrainingSpec

# TrainingSpec <-> the domain spec; the kind is the task.
SPEC = SpecTranslation(
    TrainingSpec,
    trainer_pb2.TrainingSpec,
    "task",
    {trainer_pb2.TASK_SFT: "sft", trainer_pb2.TASK_PT: "pt", trainer_pb2.TASK_MERGE: "merge"},
    "spec.task is required: TASK_SFT, TASK_PT or TASK_MERGE",
)


def training_spec(msg: trainer_pb2.TrainingSpec) -> TrainingSpec:
    """The domain spec of a request's ``TrainingSpec``; InvalidArgument when ``task`` is unset or unknown."""
    return SPEC.from_proto(msg)


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    """CreateJob and EstimateJob: the spec translated, the kind its task."""

    def __init__(self, manager: JobManager) -> None:
        self.manager = manager

    async def CreateJob(self, request: trainer_pb2.CreateJobRequest, context) -> jobs_pb2.Job:
        return await create_job(self.manager, SPEC, request)

    async def EstimateJob(self, request: trainer_pb2.EstimateJobRequest, context) -> training_pb2.Estimate:
        return await estimate_job(self.manager, SPEC, request)
