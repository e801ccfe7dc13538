"""SwiftMesh: the whole life of a large language model (download, fine-tune, align, serve) as
independent gRPC services.

Layers, each importing only those below it:

* ``swiftmesh.<svc>.v1``: generated protobuf/gRPC code of the contracts in ``protos/`` (imports nothing of ours).
* ``swiftmesh.names``, ``swiftmesh.runtime``: shared plumbing (settings, errors, server and
  channel factory, interceptors, paging, SQLite, telemetry).
* ``swiftmesh.clients``: the one way any code calls a service.
* ``swiftmesh.jobkit``: the job machinery the trainer and the aligner share.
* ``swiftmesh.services.<svc>`` (the ``services/`` folder): one service each; never imports another.
* ``swiftmesh.cli``, ``swiftmesh.quickstart``, ``swiftmesh.testing``: built on clients and the services' entry points.
"""
