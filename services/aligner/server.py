"""Aligner service process: AlignerService (CreateJob, EstimateJob) and the shared JobService
(Get, List, Cancel, Resume, Delete, Watch) over one jobkit JobManager with the alignment kinds
dpo, kto, orpo, cpo, simpo, rm, ppo and grpo. Jobs run on Ray Train (embedded local Ray, or
``settings.aligner.ray_address`` / ``RAY_ADDRESS``); models and artifacts go through the hub at
``settings.hub.target``.
"""

from __future__ import annotations

from swiftmesh.aligner.v1 import aligner_pb2, aligner_pb2_grpc
from swiftmesh.jobkit import JobManager, ModelSource
from swiftmesh.jobkit.servicer import job_service
from swiftmesh.runtime.config import Settings
from swiftmesh.runtime.server import Service

SERVICE_NAME = aligner_pb2.DESCRIPTOR.services_by_name["AlignerService"].full_name


def create_manager(settings: Settings, models: ModelSource | None = None, runtime=None) -> JobManager:
    """The aligner's JobManager (every alignment kind); ``models`` defaults to the hub."""
    from .kinds import kinds

    return JobManager(settings, "aligner", kinds(), models=models, runtime=runtime)


def create_service(settings: Settings, *, models: ModelSource | None = None, runtime=None) -> Service:
    """The aligner's Service description for ``runtime.server.serve``: AlignerService and the shared
    JobService over one JobManager (``service.manager``)."""
    from .servicer import SPEC, AlignerServicer

    manager = create_manager(settings, models, runtime)
    return job_service(settings, manager, AlignerServicer(manager), aligner_pb2_grpc.add_AlignerServiceServicer_to_server,
                       SERVICE_NAME, SPEC)
