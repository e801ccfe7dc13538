"""Engine worker process: the InferenceService on the shared gRPC runtime."""

from __future__ import annotations

from swiftmesh.gateway.v1 import inference_pb2, inference_pb2_grpc
from swiftmesh.runtime.config import Settings
from swiftmesh.runtime.placeholder import unimplemented
from swiftmesh.runtime.server import Service

SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name


def create_service(settings: Settings) -> Service:
    """An engine worker's Service description for ``runtime.server.serve``."""
    service = Service("worker", endpoint=settings.worker)
    service.add(unimplemented(inference_pb2_grpc.InferenceServiceServicer, SERVICE_NAME),
                inference_pb2_grpc.add_InferenceServiceServicer_to_server, SERVICE_NAME)
    return service
