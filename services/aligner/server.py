"""Aligner service process: JobService + AlignerService on the shared gRPC runtime."""

from __future__ import annotations

from swiftmesh.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from swiftmesh.runtime.config import Settings
from swiftmesh.runtime.placeholder import unimplemented
from swiftmesh.runtime.server import Service
from swiftmesh.aligner.v1 import aligner_pb2, aligner_pb2_grpc

SERVICE_NAME = aligner_pb2.DESCRIPTOR.services_by_name["AlignerService"].full_name
JOB_SERVICE_NAME = jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name


def create_service(settings: Settings) -> Service:
    """The aligner's Service description for ``runtime.server.serve``."""
    service = Service("aligner", endpoint=settings.aligner)
    service.add(unimplemented(aligner_pb2_grpc.AlignerServiceServicer, SERVICE_NAME),
                aligner_pb2_grpc.add_AlignerServiceServicer_to_server, SERVICE_NAME)
    service.add(unimplemented(jobs_pb2_grpc.JobServiceServicer, JOB_SERVICE_NAME),
                jobs_pb2_grpc.add_JobServiceServicer_to_server, JOB_SERVICE_NAME)
    return service
