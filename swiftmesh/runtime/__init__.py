"""The shared runtime of every SwiftMesh service: settings, errors, gRPC server and client
plumbing, interceptors, telemetry and metrics."""
