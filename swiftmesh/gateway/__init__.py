"""Generated protobuf and gRPC code of the ``swiftmesh.gateway.v1`` contracts (``protos/swiftmesh/gateway/v1``)."""
