"""Hub service process: wires the HubService servicer into the shared gRPC runtime."""

from __future__ import annotations

from swiftmesh.hub.v1 import hub_pb2, hub_pb2_grpc
from swiftmesh.runtime.config import Settings
from swiftmesh.runtime.placeholder import unimplemented
from swiftmesh.runtime.server import Service

SERVICE_NAME = hub_pb2.DESCRIPTOR.services_by_name["HubService"].full_name


def create_service(settings: Settings) -> Service:
    """The hub's Service description (servicers and hooks) for ``runtime.server.serve``."""
    service = Service("hub", endpoint=settings.hub)
    service.add(unimplemented(hub_pb2_grpc.HubServiceServicer, SERVICE_NAME),
                hub_pb2_grpc.add_HubServiceServicer_to_server, SERVICE_NAME)
    return service
