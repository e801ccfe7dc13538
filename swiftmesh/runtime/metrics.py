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


def start_metrics_server(host: str, port: int) -> MetricsServer:
    """Serve the default Prometheus registry on ``http://host:port/metrics`` in a thread."""
    server, thread = start_http_server(port, addr=host)
    bound = server.server_address[1]
    log.info("metrics on http://%s:%d/metrics", host, bound)
    return MetricsServer(server, thread, bound)
