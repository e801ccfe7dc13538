"""The ``swiftmesh`` command (typer + rich): one module per command group, each with
``register(app)``. It is a client of every service and starts them (``serve``, ``up``).

May import: ``swiftmesh.runtime``, ``swiftmesh.clients``, ``swiftmesh.quickstart``, and the
services only through their ``server.create_service`` entry points (imported lazily by name).
"""
