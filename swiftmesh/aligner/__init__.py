"""Generated protobuf and gRPC code of the ``swiftmesh.aligner.v1`` contracts (``protos/swiftmesh/aligner/v1``)."""
