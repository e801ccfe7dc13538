"""AlignerService servicer: proto <-> domain only (CreateJob, EstimateJob).

The job kind is the spec's ``rlhf_type`` (``dpo``, ``kto``, ``orpo``, ``cpo``, ``simpo``, ``rm``,
``ppo``, ``grpo``); the generic job methods (Get, List, Cancel, Resume, Delete, Watch) are
:class:`swiftmesh.jobkit.JobServicer` over the same :class:`~swiftmesh.jobkit.JobManager`, with
:data:`SPEC` turning a stored spec back into ``swiftmesh.aligner.v1.AlignmentSpec``.
"""

from __future__ import annotations

from swiftmesh.aligner.v1 import aligner_pb2, aligner_pb2_grpc
from swiftmesh.jobkit import JobManager
from swiftmesh.jobkit.servicer import SpecTranslation, create_job, estimate_job
from swiftmesh.jobs.v1 import jobs_pb2, training_pb2

from .config import RLHF_TYPES, AlignmentSpec

# AlignmentSpec <-> the domain spec; the kind is the rlhf_type.
SPEC = SpecTranslation(
    AlignmentSpec,
    aligner_pb2.AlignmentSpec,
    "rlhf_type",
    {getattr(aligner_pb2, f"RLHF_TYPE_{n.upper()}"): n for n in RLHF_TYPES},
    "spec.rlhf_type is required: one of " + ", ".join(f"RLHF_TYPE_{n.upper()}" for n in RLHF_TYPES),
)


def alignment_spec(msg: aligner_pb2.AlignmentSpec) -> AlignmentSpec:
    """The domain spec of a request's ``AlignmentSpec``; InvalidArgument when ``rlhf_type`` is unset."""
    return SPEC.from_proto(msg)


class AlignerServicer(aligner_pb2_grpc.AlignerServiceServicer):
    """CreateJob and EstimateJob: the spec translated, the kind its rlhf_type."""

    def __init__(self, manager: JobManager) -> None:
        self.manager = manager

    async def CreateJob(self, request: aligner_pb2.CreateJobRequest, context) -> jobs_pb2.Job:
        return await create_job(self.manager, SPEC, request)

    async def EstimateJob(self, request: aligner_pb2.EstimateJobRequest, context) -> training_pb2.Estimate:
        return await estimate_job(self.manager, SPEC, request)
