"""The shared runtime of every SwiftMesh service: settings (``config``), errors with google.rpc
details (``errors``), the gRPC server (``server``) and the one channel factory (``client``: auth,
deadlines, retries, TLS and tracing on all four RPC kinds), interceptors, health, telemetry,
metrics, page tokens (``paging``), the SQLite opener (``sqlite``), host identity (``host``) and a
development PKI (``certs``).

May import: the standard library, third-party packages and the generated ``swiftmesh.*.v1`` stubs
(health, status). Must not import clients, jobkit, services or the CLI.
"""
