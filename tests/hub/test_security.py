"""Hub security policies (issue 13): one pickle-weights policy for every way a file enters the
hub (UploadModel included); file names in every manifest and listing checked for traversal."""

from __future__ import annotations

import json
import shutil
import socket

import pytest

from swiftmesh.clients.hub import HubClient
from swiftmesh.hub.v1 import hub_pb2
from swiftmesh.runtime.errors import AlreadyExists, InvalidArgument, PermissionDenied
from swiftmesh.runtime.host import is_loopback
from swiftmesh.services.hub.pull import PullRequest
from swiftmesh.services.hub.store import ModelFormat
from tests.hub.helpers import write_model
from tests.hub.http_fixtures import FileServer, hf_mirror, ms_mirror


async def test_upload_of_pickle_weights_refused_unless_setting_allows(hub_server, tmp_path):
    model = write_model(tmp_path / "pk", {"model.safetensors": 100})
    (model / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    h = hub_server()
    async with HubClient(h.settings, h.target) as hub:
        with pytest.raises(InvalidArgument) as e:
            await hub.upload_dir(model, "up-pickle", format=hub_pb2.MODEL_FORMAT_FULL)
        assert e.value.reason == "PICKLE_REFUSED"
        assert "pytorch_model.bin" in e.value.message
        assert "hub.upload_allow_pickle" in e.value.message
        assert e.value.field_violations[0].field.startswith("header.files[")
        assert not (h.settings.hub_cache_dir / "models" / "up-pickle").exists()
    allowed = hub_server(hub={"upload_allow_pickle": True})
    async with HubClient(allowed.settings, allowed.target) as hub:
        m = await hub.upload_dir(model, "up-pickle", format=hub_pb2.MODEL_FORMAT_FULL)
        assert "pytorch_model.bin" in {f.path for f in m.files}


BAD_NAMES = ["../escape.json", "/etc/passwd", "sub\\..\\x.json", "a\x00b.json", "ok/../../up.json"]


async def test_http_manifest_file_names_checked_for_traversal(hub_server, tmp_path):
    srv = FileServer({"/m/config.json": b"{}"}).start()
    h = hub_server()
    try:
        async with HubClient(h.settings, h.target) as hub:
            for i, bad in enumerate(BAD_NAMES):
                srv.routes[f"/m{i}/manifest.json"] = json.dumps({"files": [
                    {"path": "config.json", "url": f"{srv.base}/m/config.json"},
                    {"path": bad, "url": f"{srv.base}/m/config.json"}]}).encode()
                with pytest.raises(InvalidArgument) as e:
                    await hub.pull(f"{srv.base}/m{i}/manifest.json", model_id=f"bad{i}")
                assert e.value.reason == "INVALID_FILE_PATH" and repr(bad) in e.value.message
        assert not any(p.name == "escape.json" or p.name == "up.json" for p in tmp_path.rglob("*"))
    finally:
        srv.stop()


async def test_hf_and_ms_listing_file_names_checked_for_traversal(hub_server, monkeypatch):
    import huggingface_hub.constants as hfc

    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", False)
    files = {"config.json": b"{}", "../../escape.json": b"{}"}
    hf = hf_mirror(files, "acme/evil").start()
    ms = ms_mirror(files, "acme/evil").start()
    h = hub_server(hub={"hf_endpoint": hf.base, "ms_endpoint": ms.base})
    try:
        async with HubClient(h.settings, h.target) as hub:
            for src in ("hf://acme/evil", "ms://acme/evil"):
                with pytest.raises(InvalidArgument) as e:
                    await hub.pull(src)
                assert e.value.reason == "INVALID_FILE_PATH" and "../../escape.json" in e.value.message, src
    finally:
        hf.stop()
        ms.stop()


def test_loopback_addresses_and_grpc_peers():
    assert is_loopback("ipv4:127.0.0.1:5000") and is_loopback("ipv4:127.0.0.2:1")
    assert is_loopback("ipv6:[::1]:5000") and is_loopback("ipv6:[::ffff:127.0.0.1]:5000")
    assert is_loopback("unix:/tmp/hub.sock") and is_loopback("127.0.0.1") and is_loopback("::1")
    assert is_loopback("localhost") and is_loopback("[::1]")
    assert not is_loopback("ipv4:10.1.2.3:5000") and not is_loopback("ipv6:[fe80::1%eth0]:5000")
    assert not is_loopback("ipv6:[::ffff:10.0.0.1]:1") and not is_loopback("0.0.0.0")
    assert not is_loopback("") and not is_loopback(None) and not is_loopback("ipv4:nonsense")
    assert not is_loopback("example.com")


def _remote_pull(h, source: str, **kw):
    job, _ = h.service.hub.start_pull(PullRequest(source=source, remote_caller=True, **kw))
    return job.future.result(timeout=60)


def test_remote_callers_read_local_paths_only_under_roots(hub_server, small_model, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.json").write_text("{}")
    root = tmp_path / "root"
    model = root / "m"
    shutil.copytree(small_model, model)
    (model / "leak.json").symlink_to(outside / "secret.json")
    open_hub = hub_server()
    with pytest.raises(PermissionDenied) as e:  # no roots configured: no local path for remote callers
        _remote_pull(open_hub, str(small_model))
    assert e.value.reason == "LOCAL_SOURCE_NOT_ALLOWED" and "none configured" in e.value.message
    h = hub_server(hub={"local_source_roots": [str(root)]})
    for source in ("/etc/passwd", f"{root}/../outside/secret.json", f"file://{outside}/secret.json",
                   str(model), "pkg://swiftmesh/__init__.py"):
        with pytest.raises(PermissionDenied) as e:
            _remote_pull(h, source, model_id="x", format=ModelFormat.FULL)
        assert e.value.reason == "LOCAL_SOURCE_NOT_ALLOWED", source
    (model / "leak.json").unlink()
    rec = _remote_pull(h, str(model), model_id="inside")
    assert {f.path for f in rec.files} == {p.relative_to(model).as_posix() for p in model.rglob("*") if p.is_file()}


def _outbound_ip() -> str | None:
    """This machine's address on its default route (no packet is sent), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
        except OSError:
            return None
        ip = s.getsockname()[0]
    return None if is_loopback(ip) else ip


async def test_a_caller_on_another_address_may_not_pull_local_paths_over_grpc(hub_server, small_model):
    ip = _outbound_ip()
    if ip is None:
        pytest.skip("this machine has no non-loopback address to call the hub from")
    h = hub_server(hub={"host": ip}, auth_token="t0ken")  # off loopback: the token is required
    async with HubClient(h.settings, f"{ip}:{h.settings.hub.port}") as hub:
        for source in (str(small_model), "pkg://swiftmesh/__init__.py"):
            with pytest.raises(PermissionDenied) as e:
                await hub.pull(source, model_id="stolen", format=hub_pb2.MODEL_FORMAT_FULL)
            assert e.value.reason == "LOCAL_SOURCE_NOT_ALLOWED" and "none configured" in e.value.message
        assert await hub.list() == []


async def test_loopback_callers_keep_local_paths_over_grpc(hub_server, small_model):
    h = hub_server()
    async with HubClient(h.settings, h.target) as hub:
        m = await hub.pull(str(small_model), model_id="local-ok")
        assert m.name == "models/local-ok"


async def test_upload_refused_mid_stream_gets_the_hubs_status_every_time(hub_server, tmp_path):
    # The hub refuses the header while the client still streams chunks. grpc aio reports some of
    # those calls (about 1 in 8 here with 8 MiB) as INTERNAL "Internal error from Core"
    # (grpc/grpc#36066); the client must surface the hub's own status every time.
    model = write_model(tmp_path / "big", {"model.safetensors": 100, "pytorch_model.bin": 8 << 20})
    h = hub_server()
    async with HubClient(h.settings, h.target) as hub:
        for _ in range(40):
            with pytest.raises(InvalidArgument) as e:
                await hub.upload_dir(model, "big-pickle", format=hub_pb2.MODEL_FORMAT_FULL)
            assert e.value.reason == "PICKLE_REFUSED"
        (model / "pytorch_model.bin").rename(model / "model-2.safetensors")
        await hub.upload_dir(model, "big", format=hub_pb2.MODEL_FORMAT_FULL)
        (model / "model-3.safetensors").write_bytes(b"new" * (3 << 20))  # not in the cache yet
        for _ in range(20):
            with pytest.raises(AlreadyExists):
                await hub.upload_dir(model, "big", format=hub_pb2.MODEL_FORMAT_FULL)
        assert {f.path for f in (await hub.get("big")).files} == {"config.json", "model.safetensors",
                                                                   "model-2.safetensors"}
    assert not any((h.settings.hub_cache_dir / "staging").iterdir())
