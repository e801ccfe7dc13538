"""What tests, benchmarks and examples use to run SwiftMesh for real, kept in the package so
that every one of them starts services the same way.

Owns:

* ``services``: the one harness that starts any service (hub, trainer, aligner, worker,
  gateway), in process on a background event loop or as its own ``swiftmesh serve`` process on
  free ports with its own data directory; settings with free ports; a stack of several.
* ``tiny``: tiny, locally built models (no download).
* ``otlp``: a minimal OTLP trace collector on loopback.

May import: ``swiftmesh.runtime``, ``swiftmesh.clients``, ``swiftmesh.cli`` and the generated
stubs. Services are started only through their public server entry points (the
``create_service`` functions the CLI's ``SERVICE_MODULES`` names, run by
``swiftmesh.runtime.server``), never by reaching into a service's domain modules. Nothing here
imports pytest: fixtures stay in the ``conftest.py`` files and call this package.
"""
