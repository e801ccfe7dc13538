"""`swiftmesh certs` makes a PKI that real servers and clients accept for mutual TLS."""

from __future__ import annotations

import stat

import grpc
import pytest
from typer.testing import CliRunner

from swiftmesh.cli.main import app
from swiftmesh.hub.v1 import hub_pb2, hub_pb2_grpc
from swiftmesh.runtime.client import channel, connect_failure_hint, domain_error
from swiftmesh.runtime.errors import Unavailable
from swiftmesh.runtime.server import start_server

from .servers import sleepy_service


def _tls(d, name=None):
    tls = {"enabled": True, "ca_file": d / "ca.pem"}
    if name:
        tls |= {"cert_file": d / f"{name}.pem", "key_file": d / f"{name}.key"}
    return tls


async def test_certs_command_makes_a_working_mtls_pki(tmp_path, make_settings):
    out = tmp_path / "pki"
    result = CliRunner().invoke(app, ["certs", "--out", str(out), "-s", "hub", "-s", "trainer"])
    assert result.exit_code == 0, result.output
    assert "SWIFTMESH_TLS__REQUIRE_CLIENT_CERT=true" in result.output
    for name in ("ca", "hub", "trainer"):
        assert (out / f"{name}.pem").exists()
        assert stat.S_IMODE((out / f"{name}.key").stat().st_mode) == 0o600
    ca_before = (out / "ca.pem").read_bytes()
    assert CliRunner().invoke(app, ["certs", "--out", str(out), "-s", "worker"]).exit_code == 0
    assert (out / "ca.pem").read_bytes() == ca_before  # the CA is kept, new certs join it

    server = make_settings(tls=_tls(out, "hub") | {"require_client_cert": True})
    running = await start_server(sleepy_service(server), server)
    try:
        for client_cert in ("trainer", "worker"):
            async with channel(running.target, make_settings(tls=_tls(out, client_cert))) as ch:
                got = await hub_pb2_grpc.HubServiceStub(ch).GetModel(hub_pb2.GetModelRequest(name="models/a"))
            assert got.name == "models/a"
        with pytest.raises(grpc.aio.AioRpcError) as e:
            async with channel(running.target, make_settings(tls=_tls(out)), retries=False) as ch:
                await hub_pb2_grpc.HubServiceStub(ch).GetModel(hub_pb2.GetModelRequest(name="models/a"), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await running.stop(0)


def test_bad_certificate_names_are_refused(tmp_path):
    result = CliRunner().invoke(app, ["certs", "--out", str(tmp_path), "-s", "../evil"])
    assert result.exit_code == 2
    assert "bad certificate name" in result.output


async def _refusal(target: str, settings) -> Unavailable:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        async with channel(target, settings, retries=False) as ch:
            await hub_pb2_grpc.HubServiceStub(ch).GetModel(hub_pb2.GetModelRequest(name="models/a"), timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value
    err = domain_error(e.value)
    assert isinstance(err, Unavailable) and err.reason == "TLS_HANDSHAKE_FAILED", err
    return err


async def test_tls_refusals_say_which_settings_to_check(tmp_path, make_settings):
    """A handshake the server refuses (no client certificate, one of another CA, plaintext) and one
    this side refuses (a server certificate of another CA) are Unavailable TLS_HANDSHAKE_FAILED
    naming the settings to check; other connect failures get no such hint."""
    from swiftmesh.runtime.certs import make_dev_pki

    pki = tmp_path / "pki"
    make_dev_pki(pki, ["hub", "client"])
    other = tmp_path / "other"
    make_dev_pki(other, ["client"])
    server = make_settings(tls=_tls(pki, "hub") | {"require_client_cert": True})
    running = await start_server(sleepy_service(server), server)
    try:
        for client in (make_settings(tls=_tls(pki)), make_settings(),
                       make_settings(tls=_tls(pki) | {"cert_file": other / "client.pem", "key_file": other / "client.key"})):
            err = await _refusal(running.target, client)
            assert "closed the connection during the handshake" in err.message
            assert "tls.cert_file" in err.message and "require_client_cert" in err.message
        err = await _refusal(running.target, make_settings(tls=_tls(other, "client")))
        assert "TLS handshake failed on this side" in err.message and "tls.ca_file" in err.message
    finally:
        await running.stop(0)
    assert connect_failure_hint("failed to connect to all addresses; last error: UNAVAILABLE: "
                                "ipv4:127.0.0.1:1: Connection refused") == ""
    assert connect_failure_hint("Socket closed") == ""
