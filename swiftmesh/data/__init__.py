"""Data shipped with SwiftMesh (see the subpackages, e.g. :mod:`swiftmesh.data.identity`), so
nothing is downloaded at run or test time. Imports only the standard library."""
