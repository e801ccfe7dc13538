"""Generated protobuf and gRPC code of the ``swiftmesh.trainer.v1`` contracts (``protos/swiftmesh/trainer/v1``)."""
