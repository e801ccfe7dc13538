"""`swiftmesh certs`: a development CA and per-service certificates for mutual TLS."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from swiftmesh.cli.common import console, fail

SERVICES = ["hub", "trainer", "aligner", "gateway", "worker"]


def certs(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for ca.pem, ca.key and SERVICE.pem / SERVICE.key.")] = Path("certs"),
    service: Annotated[list[str] | None, typer.Option("--service", "-s", help="A certificate name (repeat; default: hub trainer aligner gateway worker).")] = None,
    host: Annotated[list[str] | None, typer.Option("--host", help="An extra DNS name or IP every certificate is valid for (repeat; default: localhost 127.0.0.1).")] = None,
    days: Annotated[int, typer.Option(help="Validity in days.")] = 365,
) -> None:
    """Make a development CA (kept when OUT already has one) and one key pair per service, valid as
    server and client, then print the settings that turn on mutual TLS. For production use your own CA."""
    from swiftmesh.runtime.certs import make_dev_pki

    try:
        issued = make_dev_pki(out, service or SERVICES, host, days)
    except ValueError as e:
        fail(str(e), 2)
    ca = issued.pop("ca")
    console.print(f"CA: {ca.cert} (key {ca.key}: keep it off the service hosts)")
    for name, pair in issued.items():
        console.print(f"{name}: {pair.cert} {pair.key}")
    console.print("\nOn each service (here the hub), with the same CA everywhere:")
    example = issued.get("hub") or next(iter(issued.values()))
    for k, v in (("ENABLED", "true"), ("REQUIRE_CLIENT_CERT", "true"), ("CA_FILE", ca.cert),
                 ("CERT_FILE", example.cert), ("KEY_FILE", example.key)):
        console.print(f"  SWIFTMESH_TLS__{k}={v}")


def register(app: typer.Typer) -> None:
    """Add the ``certs`` command to the ``swiftmesh`` app."""
    app.command("certs")(certs)
