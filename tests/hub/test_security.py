"""Hub security policies (issue 13): one pickle-weights policy for every way a file enters the
hub, UploadModel included."""

from __future__ import annotations

import pytest

from swiftmesh.clients.hub import HubClient
from swiftmesh.hub.v1 import hub_pb2
from swiftmesh.runtime.errors import InvalidArgument
from tests.hub.helpers import write_model


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
