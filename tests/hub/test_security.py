"""Hub security policies (issue 13): one pickle-weights policy for every way a file enters the
hub (UploadModel included); file names in every manifest and listing checked for traversal."""

from __future__ import annotations

import json

import pytest

from swiftmesh.clients.hub import HubClient
from swiftmesh.hub.v1 import hub_pb2
from swiftmesh.runtime.errors import InvalidArgument
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
