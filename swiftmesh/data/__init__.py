"""Data shipped with SwiftMesh (see the subpackages, e.g. :mod:`swiftmesh.data.identity`)."""
