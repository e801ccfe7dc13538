"""TrainerService servicer: proto <-> domain only (CreateJob, EstimateJob).

The generic job methods (Get, List, Cancel, Resume, Delete, Watch) are
:class:`swiftmesh.jobkit.JobServicer` over the same :class:`~swiftmesh.jobkit.JobManager`.
"""

from __future__ import annotations

from swiftmesh.jobkit import JobManager
from swiftmesh.jobs.v1 import jobs_pb2, training_pb2
from swiftmesh.services.trainer.kinds import task_name
from swiftmesh.trainer.v1 import trainer_pb2, trainer_pb2_grpc


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    def __init__(self, manager: JobManager) -> None:
        self.manager = manager

    async def CreateJob(self, request: trainer_pb2.CreateJobRequest, context) -> jobs_pb2.Job:
        return await self.manager.create(
            task_name(request.spec),
            request.spec,
            job_id=request.job_id,
            labels=dict(request.labels),
            force=request.force,
            validate_only=request.validate_only,
        )

    async def EstimateJob(self, request: trainer_pb2.EstimateJobRequest, context) -> training_pb2.Estimate:
        return await self.manager.estimate(task_name(request.spec), request.spec)
