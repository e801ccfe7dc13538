"""Trainer service process: TrainerService (CreateJob, EstimateJob) and the shared JobService
(Get, List, Cancel, Resume, Delete, Watch) over one jobkit JobManager with the sft, pt and merge
kinds. Jobs run on Ray Train (embedded local Ray, or ``settings.trainer.ray_address`` /
``RAY_ADDRESS``); models and artifacts go through the hub at ``settings.hub.target``.
"""

from __future__ import annotations

from swiftmesh.jobkit import JobManager, ModelSource
from swiftmesh.jobkit.servicer import job_service
from swiftmesh.runtime.config import Settings
from swiftmesh.runtime.server import Service
from swiftmesh.trainer.v1 import trainer_pb2, trainer_pb2_grpc

SERVICE_NAME = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name


def create_manager(settings: Settings, models: ModelSource | None = None, runtime=None) -> JobManager:
    """The trainer's JobManager (kinds sft, pt, merge); ``models`` defaults to the hub."""
    from .kinds import kinds

    return JobManager(settings, "trainer", kinds(), models=models, runtime=runtime)


def create_service(settings: Settings, *, models: ModelSource | None = None, runtime=None) -> Service:
    """The trainer's Service description for ``runtime.server.serve``: TrainerService and the shared
    JobService over one JobManager (``service.manager``)."""
    from .servicer import SPEC, TrainerServicer

    manager = create_manager(settings, models, runtime)
    return job_service(settings, manager, TrainerServicer(manager), trainer_pb2_grpc.add_TrainerServiceServicer_to_server,
                       SERVICE_NAME, SPEC)
