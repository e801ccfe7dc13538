"""Typed async clients of every SwiftMesh service (hub, trainer, aligner, jobs, gateway admin and
engine workers), all on one :class:`~swiftmesh.clients.base.ServiceClient` base over the shared
channel factory. Every call from one service to another goes through here.

May import: ``swiftmesh.runtime``, ``swiftmesh.names`` and the generated ``swiftmesh.*.v1`` stubs.
Must not import jobkit, services or the CLI.
"""
