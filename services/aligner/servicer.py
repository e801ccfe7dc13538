"""AlignerService servicer: proto <-> domain only (CreateJob, EstimateJob).

The job kind is the spec's ``rlhf_type`` (``dpo``, ``kto``, ``orpo``, ``cpo``, ``simpo``, ``rm``,
``ppo``, ``grpo``); the generic job methods (Get, List, Cancel, Resume, Delete, Watch) are
:class:`swiftmesh.jobkit.JobServicer` over the same :class:`~swiftmesh.jobkit.JobManager`, with
:func:`spec_proto` turning a stored spec back into ``swiftmesh.aligner.v1.AlignmentSpec``.
"""

from __future__ import annotations

from typing import Any

from swiftmesh.aligner.v1 import aligner_pb2, aligner_pb2_grpc
from swiftmesh.jobkit import JobManager
from swiftmesh.jobkit.servicer import estimate_to_proto, job_to_proto, spec_from_proto, spec_to_proto
from swiftmesh.jobs.v1 import jobs_pb2, training_pb2
from swiftmesh.runtime.errors import InvalidArgument

from .config import RLHF_TYPES, AlignmentSpec

R = aligner_pb2.RlhfType
RLHF_NAMES = {getattr(R, f"RLHF_TYPE_{n.upper()}"): n for n in RLHF_TYPES}
RLHF_ENUMS = {v: k for k, v in RLHF_NAMES.items()}


def alignment_spec(msg: aligner_pb2.AlignmentSpec) -> AlignmentSpec:
    """The domain spec of a request's ``AlignmentSpec``; InvalidArgument when ``rlhf_type`` is unset."""
    try:
        rlhf_type = RLHF_NAMES[msg.rlhf_type]
    except KeyError:
        raise InvalidArgument(
            "spec.rlhf_type is required: one of " + ", ".join(f"RLHF_TYPE_{n.upper()}" for n in RLHF_TYPES),
            field_violations=[("spec.rlhf_type", f"got {msg.rlhf_type}")],
            reason="BAD_SPEC",
        ) from None
    spec = spec_from_proto(msg, AlignmentSpec, skip=("rlhf_type",))
    spec.rlhf_type = rlhf_type
    return spec


def alignment_spec_proto(spec: AlignmentSpec) -> aligner_pb2.AlignmentSpec:
    """The proto of a domain spec (the inverse of :func:`alignment_spec`)."""
    msg = spec_to_proto(spec, aligner_pb2.AlignmentSpec(), skip=("rlhf_type",))
    msg.rlhf_type = RLHF_ENUMS.get(spec.rlhf_type, R.RLHF_TYPE_UNSPECIFIED)
    return msg


def spec_proto(kind: str, spec: dict[str, Any]) -> aligner_pb2.AlignmentSpec:
    """A job's stored spec JSON as the proto packed into ``Job.spec``."""
    return alignment_spec_proto(AlignmentSpec.from_json(spec))


class AlignerServicer(aligner_pb2_grpc.AlignerServiceServicer):
    """CreateJob and EstimateJob: the spec translated, the kind its rlhf_type."""

    def __init__(self, manager: JobManager) -> None:
        self.manager = manager

    async def CreateJob(self, request: aligner_pb2.CreateJobRequest, context) -> jobs_pb2.Job:
        spec = alignment_spec(request.spec)
        job = await self.manager.create(
            spec.rlhf_type,
            spec,
            job_id=request.job_id,
            labels=dict(request.labels),
            force=request.force,
            validate_only=request.validate_only,
        )
        return job_to_proto(job, spec_proto)

    async def EstimateJob(self, request: aligner_pb2.EstimateJobRequest, context) -> training_pb2.Estimate:
        spec = alignment_spec(request.spec)
        return estimate_to_proto(await self.manager.estimate(spec.rlhf_type, spec))
