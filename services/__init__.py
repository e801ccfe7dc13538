"""SwiftMesh services: hub, trainer, aligner, gateway (importable as ``swiftmesh.services.<svc>``).

Each is ``server.py`` (process wiring), ``servicer.py`` (proto <-> domain, nothing else) and
domain modules (no grpc, no ``_pb2``). A service never imports another: what two share lives in
``swiftmesh.jobkit``, ``swiftmesh.runtime`` or ``swiftmesh.names``, and calls between them go
through ``swiftmesh.clients``.
"""
