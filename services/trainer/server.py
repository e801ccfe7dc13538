"""Trainer service process: JobService + TrainerService on the shared gRPC runtime."""

from __future__ import annotations

from swiftmesh.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from swiftmesh.runtime.config import Settings
from swiftmesh.runtime.placeholder import unimplemented
from swiftmesh.runtime.server import Service
from swiftmesh.trainer.v1 import trainer_pb2, trainer_pb2_grpc

SERVICE_NAME = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name
JOB_SERVICE_NAME = jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name


def create_service(settings: Settings) -> Service:
    """The trainer's Service description for ``runtime.server.serve``."""
    service = Service("trainer", endpoint=settings.trainer)
    service.add(unimplemented(trainer_pb2_grpc.TrainerServiceServicer, SERVICE_NAME),
                trainer_pb2_grpc.add_TrainerServiceServicer_to_server, SERVICE_NAME)
    service.add(unimplemented(jobs_pb2_grpc.JobServiceServicer, JOB_SERVICE_NAME),
                jobs_pb2_grpc.add_JobServiceServicer_to_server, JOB_SERVICE_NAME)
    return service
