#!/usr/bin/env python3
"""Container health check of one SwiftMesh service: `swiftmesh-healthcheck <service>`.

Asks the service's own gRPC port on the loopback (the port comes from the same settings the
service reads: SWIFTMESH_* variables and SWIFTMESH_CONFIG) over the standard gRPC health protocol
(grpc.health.v1, service "" = every gRPC service of the process). For the gateway it also asks
the OpenAI REST facade's GET /health. Exit 0 when healthy, 1 otherwise, with one line saying why.
Docker's HEALTHCHECK and compose's healthcheck run it; Kubernetes uses its native gRPC probes.
"""

from __future__ import annotations

import asyncio
import sys
import urllib.request

SERVICES = ("hub", "trainer", "aligner", "worker", "gateway")


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in SERVICES:
        print(f"usage: {argv[0]} {{{'|'.join(SERVICES)}}}", file=sys.stderr)
        return 2
    service = argv[1]
    from swiftmesh.runtime.config import ConfigError, Settings
    from swiftmesh.runtime.health import check

    try:
        settings = Settings.load()
    except ConfigError as e:
        print(f"{service}: {e}")
        return 1
    port = settings.endpoint(service).port
    status = asyncio.run(check(f"127.0.0.1:{port}", settings, timeout=3.0))
    if status != "SERVING":
        print(f"{service}: gRPC health on port {port}: {status}")
        return 1
    if service == "gateway":
        url = f"http://127.0.0.1:{settings.gateway.http_port}/health"
        try:
            with urllib.request.urlopen(url, timeout=3) as r:
                if r.status != 200:
                    print(f"gateway: {url}: HTTP {r.status}")
                    return 1
        except OSError as e:
            print(f"gateway: {url}: {e}")
            return 1
    print(f"{service}: SERVING")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
