"""Prometheus metrics: one ``/metrics`` HTTP endpoint per service process (prometheus-client)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from threading import Thread

from prometheus_client import start_http_server

log = logging.getLogger("swiftmesh.metrics")


@dataclass
class MetricsServer:
    """A running ``/metrics`` endpoint."""

    server: object
    thread: Thread
    port: int

    def shutdown(self) -> None:
        """Stop the /metrics HTTP server and free its port."""
        self.server.shutdown()
        self.server.server_close()


def start_metrics_server(host: str, port: int, setting: str = "") -> MetricsServer:
    """Serve the default Prometheus registry on ``http://host:port/metrics`` in a thread.

    Args:
        host: bind address.
        port: TCP port (0: any free port).
        setting: the environment variable that sets ``port`` (for the error message).

    Raises:
        ConfigError: the port is taken (another process, often a second service of the same
            kind on this host); the message names ``setting`` and how to pick another port.
    """
    try:
        server, thread = start_http_server(port, addr=host)
    except OSError as e:
        from swiftmesh.runtime.config import ConfigError

        where = setting or "the service's metrics_port"
        raise ConfigError(f"metrics port {host}:{port} is not available ({e.strerror or e}): set {where} "
                          "to a free port, or 0 to turn the /metrics endpoint off") from None
    bound = server.server_address[1]
    log.info("metrics on http://%s:%d/metrics", host, bound)
    return MetricsServer(server, thread, bound)
