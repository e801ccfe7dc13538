"""hub:// with a service token: the token reaches the peer hubs this configuration names, and
never a host that a pull request names (a loopback server that records what it is sent)."""

from __future__ import annotations

import grpc
import pytest

from swiftmesh.clients.hub import HubClient
from swiftmesh.runtime.errors import SwiftMeshError
from tests.hub.helpers import write_model

TOKEN = "s3cret"


async def test_a_configured_peer_gets_the_token_and_mirrors(hub_server, tmp_path):
    src = write_model(tmp_path / "src" / "m", {"model.safetensors": 1 << 20})
    a = hub_server(data_dir=tmp_path / "a", auth_token=TOKEN)
    async with HubClient(a.settings, a.target) as hub:
        await hub.pull(str(src))
    b = hub_server(data_dir=tmp_path / "b", auth_token=TOKEN, trusted_peers=[a.target])
    async with HubClient(b.settings, b.target) as hub:
        mirrored = await hub.pull(f"hub://{a.target}/m")
    assert mirrored.name == "models/m"


async def test_an_unknown_hub_named_by_a_pull_never_sees_the_token(hub_server, tmp_path):
    seen: list[dict] = []

    async def get_model(request: bytes, context) -> bytes:
        seen.append(dict(context.invocation_metadata()))
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such model")

    rogue = grpc.aio.server()
    rogue.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "swiftmesh.hub.v1.HubService", {"GetModel": grpc.unary_unary_rpc_method_handler(get_model)}),))
    port = rogue.add_insecure_port("127.0.0.1:0")
    await rogue.start()
    try:
        b = hub_server(data_dir=tmp_path / "b", auth_token=TOKEN)
        async with HubClient(b.settings, b.target) as hub:
            with pytest.raises(SwiftMeshError):
                await hub.pull(f"hub://127.0.0.1:{port}/stolen")
    finally:
        await rogue.stop(0)
    assert seen, "the hub never called the peer"
    assert all("authorization" not in md for md in seen), seen
