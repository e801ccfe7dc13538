"""Alembic migrations of the SwiftMesh database layer (:mod:`swiftmesh.runtime.database`)."""
