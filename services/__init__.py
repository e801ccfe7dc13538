"""SwiftMesh services: hub, trainer, aligner, gateway (importable as swiftmesh.services.<svc>)."""
