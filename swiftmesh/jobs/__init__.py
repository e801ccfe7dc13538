"""Generated protobuf and gRPC code of the ``swiftmesh.jobs.v1`` contracts (``protos/swiftmesh/jobs/v1``)."""
