"""Every hop of the deployed suite refuses what it must, with the right status and no retry storm.

Against the five processes of ``conftest.chain`` (token, mutual TLS, API keys), with SwiftMesh's
own clients as the services use them (retries of UNAVAILABLE on), on unary, server-streaming and
client-streaming RPCs:

* a missing or wrong token: UNAUTHENTICATED (MISSING_CREDENTIALS / INVALID_CREDENTIALS), and the
  server's ``swiftmesh_grpc_server_handled_total`` rose by exactly one such call: no retry;
* a client without a certificate (TLS with the CA only, and plaintext): Unavailable
  TLS_HANDSHAKE_FAILED saying which settings to check; no RPC reached the server, and the TCP
  connections it got (counted by a proxy in front of it) stay within the channel's retry policy;
* the gateway's OpenAI API: no key or a wrong key 401, an ordinary key on an admin route 403.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from swiftmesh.clients.inference import GenerateRequest, SamplingParams
from swiftmesh.hub.v1 import hub_pb2
from swiftmesh.runtime.errors import PermissionDenied, SwiftMeshError, Unauthenticated, Unavailable
from tests.hub.tcp_proxy import CuttingProxy

from .conftest import TOKEN

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# The client's retry policy (swiftmesh.runtime.client.RETRY_SERVICE_CONFIG): at most this many
# attempts of one call, so at most this many connections for one refused handshake.
MAX_ATTEMPTS = 5


async def _collect(aiter) -> list:
    return [x async for x in aiter]


async def _generate(w) -> list:
    call = w.generate(GenerateRequest(request_id="hop", model="none", text="hi", sampling=SamplingParams(max_tokens=1)))
    out = []
    while (r := await call.read()) is not None:
        out.append(r)
    return out


def _upload(tmp_dir):
    def go(h):
        d = tmp_dir / "upload"
        d.mkdir(exist_ok=True)
        (d / "adapter_config.json").write_text("{}")
        return h.upload_dir(d, "refused-upload", format=hub_pb2.MODEL_FORMAT_PEFT_ADAPTER)

    return go


# (service, client kind, RPC method, call): one unary and one streamed RPC per service (the hub's
# client stream too); the gateway's admin service has unary RPCs only.
def hops(tmp_dir):
    return [
        ("hub", "hub", "GetModel", lambda h: h.get("models/none")),
        ("hub", "hub", "ReadModelFile", lambda h: _collect(h.read_file("models/none", "config.json"))),
        ("hub", "hub", "UploadModel", _upload(tmp_dir)),
        ("trainer", "jobs", "ListJobs", lambda j: j.list(page_size=1, all_pages=False)),
        ("trainer", "jobs", "WatchJob", lambda j: _collect(j.watch("jobs/none", follow=False))),
        ("aligner", "jobs", "ListJobs", lambda j: j.list(page_size=1, all_pages=False)),
        ("aligner", "jobs", "WatchJob", lambda j: _collect(j.watch("jobs/none", follow=False))),
        ("worker", "worker", "GetWorkerStatus", lambda w: w.status()),
        ("worker", "worker", "Generate", _generate),
        ("gateway", "gateway", "ListWorkers", lambda g: g.list_workers()),
    ]


# What a server sees meanwhile without the tests: the gateway health-checks a registered worker.
BACKGROUND = {("worker", "GetWorkerStatus", "OK")}


def _changed(svc: str, before: dict, after: dict) -> dict:
    """The (method, code) counts of ``svc`` that changed between two scrapes, background aside."""
    return {k: after[k] - before.get(k, 0) for k in after
            if after[k] != before.get(k, 0) and (svc, *k) not in BACKGROUND}


HOP_IDS = [f"{svc}-{method}" for svc, _, method, _ in hops(None)]


@pytest.mark.parametrize("token", [None, "not-the-token"], ids=["no-token", "wrong-token"])
@pytest.mark.parametrize("hop", range(len(HOP_IDS)), ids=HOP_IDS)
def test_a_missing_or_wrong_token_is_refused_once(chain, tmp_path, hop, token):
    svc, kind, method, call = hops(tmp_path)[hop]
    client = chain.as_client(token=token)
    before = chain.handled(svc)
    start = time.monotonic()
    with pytest.raises(Unauthenticated) as e:
        chain.client(kind, call, settings=client, target=chain.settings[svc].endpoint(svc).target, timeout=60)
    elapsed = time.monotonic() - start
    assert e.value.reason == ("MISSING_CREDENTIALS" if token is None else "INVALID_CREDENTIALS"), e.value
    after = chain.handled(svc)
    # Exactly one attempt reached the server, and it was refused: the client did not retry.
    assert _changed(svc, before, after) == {(method, "UNAUTHENTICATED"): 1}
    assert elapsed < 10, f"a refusal took {elapsed:.1f} s"


def test_the_right_token_passes_every_hop(chain, tmp_path):
    """Control for the refusals above: the same calls with the token are not refused (they fail
    for the reasons the domain gives: nothing by those names exists, no model loaded yet)."""
    for svc, kind, method, call in hops(tmp_path):
        if method == "UploadModel":
            continue  # would store a model; the main job uploads through the trainer and aligner
        try:
            chain.client(kind, call, target=chain.settings[svc].endpoint(svc).target, timeout=60)
        except SwiftMeshError as e:
            assert not isinstance(e, (Unauthenticated, PermissionDenied)), (svc, method, e)
            # The worker has no model before the main job deploys one: the engine's answer.
            assert not isinstance(e, Unavailable) or e.reason == "ENGINE_NOT_READY", (svc, method, e)


async def _refused_handshake(chain, svc, kind, call, settings, proxy) -> tuple[BaseException | None, float]:
    import importlib

    from .conftest import CLIENTS

    module, cls = CLIENTS[kind]
    client_cls = getattr(importlib.import_module(module), cls)
    start = time.monotonic()
    try:
        async with client_cls(settings, proxy.address) as c:
            await call(c)
    except BaseException as e:  # noqa: BLE001 - checked by the caller
        return e, time.monotonic() - start
    return None, time.monotonic() - start


def test_a_client_without_a_certificate_fails_the_handshake_within_the_retry_policy(chain, tmp_path):
    """Every call of every hop, without a client certificate (TLS with the CA only) and in
    plaintext, all at once: each ends Unavailable TLS_HANDSHAKE_FAILED naming the settings, no RPC
    reaches a server, and each call's proxy saw at most one connection per attempt."""
    variants = {"ca-only": chain.as_client(cert=None), "plaintext": _plaintext(chain)}
    before = {svc: chain.handled(svc) for svc in ("hub", "trainer", "aligner", "worker", "gateway")}
    cases = []
    for name, settings in variants.items():
        for svc, kind, method, call in hops(tmp_path):
            cases.append((name, svc, method, kind, call, settings, CuttingProxy(chain.settings[svc].endpoint(svc).target)))

    async def all_at_once():
        return await asyncio.gather(*(_refused_handshake(chain, svc, kind, call, settings, proxy)
                                      for _, svc, _, kind, call, settings, proxy in cases))

    try:
        results = chain.run(all_at_once(), 120)
    finally:
        for case in cases:
            case[-1].close()
    for (variant, svc, method, *_rest, proxy), (err, elapsed) in zip(cases, results):
        where = f"{variant} {svc}.{method}"
        assert isinstance(err, Unavailable), f"{where}: {err!r}"
        assert err.reason == "TLS_HANDSHAKE_FAILED", f"{where}: {err}"
        assert "client certificate" in err.message and "tls.cert_file" in err.message, f"{where}: {err.message}"
        assert 1 <= len(proxy.downstream) <= MAX_ATTEMPTS, f"{where}: {len(proxy.downstream)} connections"
        assert elapsed < 30, f"{where}: {elapsed:.1f} s"
    for svc, counts in before.items():
        assert not _changed(svc, counts, chain.handled(svc)), f"an RPC without a certificate reached {svc}"
    conns = sorted(len(case[-1].downstream) for case in cases)
    print(f"\nrefused handshakes: {len(cases)} calls, connections per call {conns[0]}..{conns[-1]}, "
          f"slowest {max(t for _, t in results):.1f} s")


def _plaintext(chain):
    from swiftmesh.testing.services import with_overrides

    return with_overrides(chain.operator, tls={"enabled": False, "ca_file": None, "cert_file": None, "key_file": None})


def test_health_is_open_without_the_token_but_not_without_a_certificate(chain):
    """Probes need no token (the health service is open) but do need a client certificate: the
    reason the deploy files probe with swiftmesh-healthcheck and the mounted certificates."""
    from swiftmesh.runtime.health import check

    for svc in ("hub", "trainer", "aligner", "worker", "gateway"):
        target = chain.settings[svc].endpoint(svc).target
        assert chain.run(check(target, chain.as_client(token=None))) == "SERVING", svc
        assert chain.run(check(target, chain.as_client(cert=None))) == "UNREACHABLE", svc


def test_the_openai_api_needs_a_key_and_admin_routes_an_admin_key(chain):
    key, secret = chain.client("gateway", lambda g: g.create_api_key("chain-hops-user"))
    base = chain.processes["gateway"].http_url
    with httpx.Client(base_url=base, timeout=30) as http:
        for headers in ({}, {"Authorization": "Bearer sk-not-a-key"}, {"Authorization": f"Bearer {TOKEN}x"}):
            r = http.get("/v1/models", headers=headers)
            assert r.status_code == 401, (headers, r.text)
            assert r.json()["error"]["code"] == ("invalid_api_key" if headers else None), r.text
        user = {"Authorization": f"Bearer {secret}"}
        assert http.get("/v1/models", headers=user).status_code == 200
        r = http.post("/v1/admin/workers", json={"address": "127.0.0.1:1"}, headers=user)
        assert r.status_code == 403, r.text
        r = http.get("/v1/admin/workers", headers={})
        assert r.status_code == 401, r.text
    chain.client("gateway", lambda g: g.delete_api_key(key.name))
