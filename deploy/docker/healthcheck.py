#!/usr/bin/env python3
"""Container health check of one SwiftMesh service: `swiftmesh-healthcheck <service>`.

Asks the service's own gRPC port on the loopback (the port comes from the same settings the
service reads: SWIFTMESH_* variables and SWIFTMESH_CONFIG) over the standard gRPC health protocol
(grpc.health.v1, service "" = every gRPC service of the process). For the gateway it also asks
the OpenAI REST facade's GET /health. Exit 0 when healthy, 1 otherwise, with one line saying why.
Docker's HEALTHCHECK, compose's healthcheck and the Kubernetes exec probes run it.

Under mutual TLS it dials with the service's own settings: ``tls.ca_file`` to verify the server
and ``tls.cert_file``/``tls.key_file`` as its client certificate (the service's own pair, mounted
in the container), so ``tls.require_client_cert`` does not lock the probe out. The server's
certificate is checked against ``tls.server_name`` when set, else against the host of the
service's ``address`` setting (``hub`` of ``hub:50051``, the name clients dial and its
certificate carries), since it dials 127.0.0.1, which a production certificate need not name.
"""

from __future__ import annotations

import asyncio
import sys
import urllib.request

SERVICES = ("hub", "trainer", "aligner", "worker", "gateway")


def dial_settings(settings, service: str):
    """``settings`` to dial the service on 127.0.0.1: with TLS and no ``tls.server_name``, the
    server name is the host of the service's ``address`` setting (none set: 127.0.0.1 itself)."""
    tls = settings.tls
    address = settings.endpoint(service).address
    if (tls.enabled or tls.ca_file) and not tls.server_name and address:
        host = address.rsplit(":", 1)[0].strip("[]")
        return settings.model_copy(update={"tls": tls.model_copy(update={"server_name": host})})
    return settings


def tls_note(settings) -> str:
    """What an unreachable TLS server was dialled with (the usual cause: certificates)."""
    tls = settings.tls
    if not (tls.enabled or tls.ca_file):
        return ""
    return (f" (TLS: CA {tls.ca_file}, client certificate {tls.cert_file or 'none'}, server name "
            f"{tls.server_name or '127.0.0.1'}; under tls.require_client_cert the probe needs SWIFTMESH_TLS__CERT_FILE "
            "and SWIFTMESH_TLS__KEY_FILE)")


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
    settings = dial_settings(settings, service)
    status = asyncio.run(check(f"127.0.0.1:{port}", settings, timeout=3.0))
    if status != "SERVING":
        print(f"{service}: gRPC health on port {port}: {status}{tls_note(settings)}")
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
