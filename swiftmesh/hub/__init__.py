"""Generated protobuf and gRPC code of the ``swiftmesh.hub.v1`` contracts (``protos/swiftmesh/hub/v1``)."""
