"""AlignerService servicer: proto <-> domain only (CreateJob, EstimateJob).

The job kind is the spec's ``rlhf_type`` (``dpo``, ``kto``, ``orpo``, ``cpo``, ``simpo``, ``rm``,
``ppo``, ``grpo``); the generic job methods (Get, List, Cancel, Resume, Delete, Watch) are
:class:`swiftmesh.jobkit.JobServicer` over the same :class:`~swiftmesh.jobkit.JobManager`.
"""

from __future__ import annotations

from swiftmesh.aligner.v1 import aligner_pb2, aligner_pb2_grpc
from swiftmesh.jobkit import JobManager
from swiftmesh.jobs.v1 import jobs_pb2, training_pb2
from swiftmesh.services.aligner.kinds import rlhf_name


class AlignerServicer(aligner_pb2_grpc.AlignerServiceServicer):
    def __init__(self, manager: JobManager) -> None:
        self.manager = manager

    async def CreateJob(self, request: aligner_pb2.CreateJobRequest, context) -> jobs_pb2.Job:
        return await self.manager.create(
            rlhf_name(request.spec),
            request.spec,
            job_id=request.job_id,
            labels=dict(request.labels),
            force=request.force,
            validate_only=request.validate_only,
        )

    async def EstimateJob(self, request: aligner_pb2.EstimateJobRequest, context) -> training_pb2.Estimate:
        return await self.manager.estimate(rlhf_name(request.spec), request.spec)
