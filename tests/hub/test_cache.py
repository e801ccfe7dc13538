"""The cache through the gRPC surface: visibility, names, verify/repair, quota/LRU, pins,
deletes with shared blobs, pickle policy, uploads with lineage, listing, file reads."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from swiftmesh.clients.hub import HubClient
from swiftmesh.hub.v1 import hub_pb2
from swiftmesh.runtime.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from tests.hub.helpers import sha256_file, write_model


def _cache(hub) -> Path:
    return hub.settings.hub_cache_dir


async def test_pull_local_dir_is_complete_verified_and_idempotent(hub_server, small_model):
    h = hub_server()
    seen = []
    async with HubClient(h.settings, h.target) as hub:
        m = await hub.pull(str(small_model), on_progress=seen.append)
        assert m.name == "models/small"
        assert m.format == hub_pb2.MODEL_FORMAT_FULL
        assert {f.path for f in m.files} == {"config.json", "model.safetensors", "tokenizer.json"}
        for f in m.files:
            assert f.sha256 == sha256_file(small_model / f.path)
            assert sha256_file(Path(m.location.path) / f.path) == f.sha256
        assert m.size_bytes == sum(f.size_bytes for f in m.files)
        assert seen and seen[-1].files_total == 3
        assert max(p.bytes_done for p in seen) <= m.size_bytes
        # a second pull returns the same model at once (no new snapshot)
        again = await hub.pull(str(small_model))
        assert again.location.path == m.location.path
        assert again.create_time == m.create_time
        assert (await hub.get("small")).name == (await hub.get("models/small")).name
        assert [x.name for x in await hub.list()] == ["models/small"]
        # the same id from another source is refused unless forced
        other = write_model(small_model.parent / "other", {"model.safetensors": 1000}, seed=9)
        with pytest.raises(AlreadyExists) as e:
            await hub.pull(str(other), model_id="small")
        assert e.value.field_violations[0].field == "model_id"
        forced = await hub.pull(str(other), model_id="small", force=True)
        assert forced.location.path != m.location.path
        assert not Path(m.location.path).exists()  # old snapshot gone
        assert {f.sha256 for f in forced.files} == {sha256_file(other / "config.json"),
                                                    sha256_file(other / "model.safetensors")}


async def test_bad_names_in_every_rpc(hub_server, small_model, tmp_path):
    h = hub_server()
    async with HubClient(h.settings, h.target) as hub:
        for bad in ("../evil", "/etc/passwd", "a/b/c", "x y", "-x", "x/..", "org/../../etc", "é", "a" * 129):
            with pytest.raises(InvalidArgument) as e:
                await hub.pull(str(small_model), model_id=bad)
            assert [v.field for v in e.value.field_violations] == ["model_id"], bad
            assert e.value.reason == "INVALID_MODEL_NAME"
            with pytest.raises(InvalidArgument) as e:
                await hub.get(bad)
            assert [v.field for v in e.value.field_violations] == ["name"]
        with pytest.raises(InvalidArgument) as e:
            await hub.upload_dir(small_model, "../up", format=hub_pb2.MODEL_FORMAT_FULL)
        assert [v.field for v in e.value.field_violations] == ["header.model_id"]
        with pytest.raises(InvalidArgument) as e:
            await hub.pull(str(small_model), lineage={"base_model": "../x"})
        assert e.value.field_violations[0].field == "lineage.base_model"
        m = await hub.pull(str(small_model))
        with pytest.raises(InvalidArgument) as e:
            async for _ in hub.read_file(m.name, "../../hub.db"):
                pass
        assert e.value.field_violations[0].field == "path"
    # nothing was written outside the cache
    assert not (tmp_path / "evil").exists() and not (tmp_path / "up").exists()
    assert sorted(p.name for p in (_cache(h) / "models").iterdir()) == ["_"]


async def test_verify_finds_corruption_and_repairs_from_source(hub_server, small_model):
    h = hub_server()
    async with HubClient(h.settings, h.target) as hub:
        m = await hub.pull(str(small_model))
        weights = next(f for f in m.files if f.path == "model.safetensors")
        blob = _cache(h) / "blobs" / "sha256" / weights.sha256[:2] / weights.sha256
        os.chmod(blob, 0o644)
        with open(blob, "r+b") as f:
            f.seek(1000)
            f.write(b"\xff" * 16)
        report = await hub.verify(m.name)
        assert not report.ok
        status = {f.path: f.status for f in report.files}
        assert status == {"config.json": "ok", "model.safetensors": "corrupt", "tokenizer.json": "ok"}
        bad = next(f for f in report.files if f.path == "model.safetensors")
        assert bad.actual_sha256 != bad.expected_sha256 == weights.sha256
        repaired = await hub.verify(m.name, repair=True)
        assert repaired.ok
        assert {f.path: f.status for f in repaired.files}["model.safetensors"] == "repaired"
        assert sha256_file(Path(m.location.path) / "model.safetensors") == weights.sha256
        assert sha256_file(blob) == weights.sha256
        # a file removed from the model directory comes back from its intact blob
        os.unlink(Path(m.location.path) / "tokenizer.json")
        report = await hub.verify(m.name)
        assert {f.path: f.status for f in report.files}["tokenizer.json"] == "missing"
        assert (await hub.verify(m.name, repair=True)).ok
        assert (await hub.verify(m.name)).ok


async def test_verify_reports_unrepairable_upload(hub_server, small_model):
    h = hub_server()
    async with HubClient(h.settings, h.target) as hub:
        m = await hub.upload_dir(small_model, "up", format=hub_pb2.MODEL_FORMAT_FULL)
        target = Path(m.location.path) / "config.json"
        os.chmod(target, 0o644)
        target.write_text("{}")
        report = await hub.verify(m.name, repair=True)
        assert not report.ok
        assert {f.path: f.status for f in report.files}["config.json"] == "corrupt"


async def test_quota_too_small_is_resource_exhausted_and_leaves_nothing(hub_server, small_model):
    h = hub_server(hub={"quota_bytes": 1 << 20})
    async with HubClient(h.settings, h.target) as hub:
        with pytest.raises(ResourceExhausted) as e:
            await hub.pull(str(small_model))
        assert e.value.reason == "QUOTA_EXCEEDED"
        assert await hub.list() == []
        with pytest.raises(NotFound):
            await hub.get("small")
    cache = _cache(h)
    assert not any(p.is_file() for p in (cache / "blobs").rglob("*"))
    assert not any((cache / "models").rglob("*"))
    assert not any((cache / "staging").iterdir())


async def test_lru_eviction_never_evicts_pinned_models(hub_server, tmp_path):
    sizes = {"model.safetensors": 3 << 20}
    srcs = {n: write_model(tmp_path / n, sizes, seed=i) for i, n in enumerate("abcd")}
    h = hub_server(hub={"quota_bytes": 7 << 20})  # room for two models
    async with HubClient(h.settings, h.target) as hub:
        await hub.pull(str(srcs["a"]))
        await hub.pull(str(srcs["b"]))
        await hub.get("a")  # a is now more recently used than b
        await hub.pull(str(srcs["c"]))  # evicts b
        assert sorted(m.name for m in await hub.list()) == ["models/a", "models/c"]
        await hub.pin("c", "jobs/train-1")
        await hub.get("a")
        await hub.pull(str(srcs["d"]))  # c is older but pinned: a goes
        assert sorted(m.name for m in await hub.list()) == ["models/c", "models/d"]
        assert (await hub.get("c")).pins == ["jobs/train-1"]
        await hub.pin("d", "workers/w1")
        with pytest.raises(ResourceExhausted):  # both pinned: no room, nothing evicted
            await hub.pull(str(srcs["a"]))
        assert sorted(m.name for m in await hub.list()) == ["models/c", "models/d"]
        await hub.unpin("c", "jobs/train-1")
        assert (await hub.get("c")).pins == []
        await hub.pull(str(srcs["a"]))
        assert sorted(m.name for m in await hub.list()) == ["models/a", "models/d"]


async def test_delete_keeps_blobs_other_models_use(hub_server, tmp_path):
    shared = write_model(tmp_path / "one", {"model.safetensors": 1 << 20}, seed=1)
    two = tmp_path / "two"
    shutil.copytree(shared, two)
    (two / "config.json").write_text('{"model_type": "llama", "variant": 2}')
    h = hub_server()
    async with HubClient(h.settings, h.target) as hub:
        a = await hub.pull(str(shared))
        b = await hub.pull(str(two))
        w = next(f.sha256 for f in a.files if f.path == "model.safetensors")
        assert w == next(f.sha256 for f in b.files if f.path == "model.safetensors")
        blobs = _cache(h) / "blobs" / "sha256"
        assert len([p for p in blobs.rglob("*") if p.is_file()]) == 3  # one copy of the shared weights
        await hub.pin("one", "jobs/j")
        with pytest.raises(FailedPrecondition) as e:
            await hub.delete("one")
        assert e.value.reason == "MODEL_PINNED"
        await hub.delete("one", force=True)
        with pytest.raises(NotFound):
            await hub.get("one")
        assert not Path(a.location.path).exists()
        assert (blobs / w[:2] / w).exists()  # still used by "two"
        a_config = next(f.sha256 for f in a.files if f.path == "config.json")
        assert not (blobs / a_config[:2] / a_config).exists()
        assert (await hub.verify("two")).ok
        await hub.delete("two")
        assert not [p for p in blobs.rglob("*") if p.is_file()]
        with pytest.raises(NotFound):
            await hub.delete("two")


async def test_pickle_weights_refused_unless_allowed(hub_server, tmp_path):
    only_pickle = tmp_path / "pk"
    only_pickle.mkdir()
    (only_pickle / "config.json").write_text("{}")
    (only_pickle / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    mixed = write_model(tmp_path / "mixed", {"model.safetensors": 1000})
    (mixed / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    (mixed / "training_args.bin").write_bytes(b"\x80\x04pickle")
    h = hub_server()
    async with HubClient(h.settings, h.target) as hub:
        with pytest.raises(InvalidArgument) as e:
            await hub.pull(str(only_pickle))
        assert e.value.reason == "PICKLE_REFUSED"
        assert e.value.field_violations[0].field == "allow_pickle"
        assert "pytorch_model.bin" in e.value.message
        ok = await hub.pull(str(only_pickle), allow_pickle=True)
        assert {f.path for f in ok.files} == {"config.json", "pytorch_model.bin"}
        m = await hub.pull(str(mixed))  # safetensors present: pickle files are left out
        assert {f.path for f in m.files} == {"config.json", "model.safetensors"}
        with pytest.raises(InvalidArgument) as e:
            await hub.pull(str(tmp_path / "pk" / "pytorch_model.bin"), model_id="single", format=hub_pb2.MODEL_FORMAT_FULL)
        assert e.value.reason == "PICKLE_REFUSED"


async def test_format_must_be_detectable_or_given(hub_server, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text('{"messages": []}\n')
    h = hub_server()
    async with HubClient(h.settings, h.target) as hub:
        with pytest.raises(InvalidArgument) as e:
            await hub.pull(str(data))
        assert e.value.field_violations[0].field == "format"
        m = await hub.pull(str(data), format=hub_pb2.MODEL_FORMAT_DATASET)
        assert m.format == hub_pb2.MODEL_FORMAT_DATASET
        with pytest.raises(NotFound) as e:
            await hub.pull(str(tmp_path / "missing"))
        assert e.value.reason == "SOURCE_NOT_FOUND"
        with pytest.raises(InvalidArgument) as e:
            await hub.pull("gopher://x/y")
        assert e.value.field_violations[0].field == "source"


async def test_upload_with_lineage_listing_filters_and_paging(hub_server, small_model, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    (adapter / "adapter_model.safetensors").write_bytes(os.urandom(5000))
    (adapter / "sub").mkdir()
    (adapter / "sub" / "extra.txt").write_text("x")
    (adapter / ".hidden").write_text("skipped")
    h = hub_server()
    async with HubClient(h.settings, h.target) as hub:
        base = await hub.pull(str(small_model), labels={"team": "nlp"})
        assert dict(base.labels) == {"team": "nlp"}
        sft = await hub.upload_dir(adapter, "small-sft", format=hub_pb2.MODEL_FORMAT_PEFT_ADAPTER,
                                   lineage={"base_model": base.name, "job": "jobs/sft-1"}, labels={"step": "100"})
        assert sft.source == "upload"
        assert {f.path for f in sft.files} == {"adapter_config.json", "adapter_model.safetensors", "sub/extra.txt"}
        assert sft.lineage.base_model == "models/small" and sft.lineage.job == "jobs/sft-1"
        dpo = await hub.upload_dir(adapter, "org/small-dpo", format=hub_pb2.MODEL_FORMAT_PEFT_ADAPTER,
                                   lineage={"base_model": base.name, "parent_model": sft.name, "job": "jobs/dpo-1"})
        with pytest.raises(AlreadyExists):
            await hub.upload_dir(adapter, "org/small-dpo", format=hub_pb2.MODEL_FORMAT_PEFT_ADAPTER)
        again = await hub.upload_dir(adapter, "org/small-dpo", format=hub_pb2.MODEL_FORMAT_PEFT_ADAPTER,
                                     lineage={"base_model": base.name}, overwrite=True)
        assert again.lineage.parent_model == ""
        assert dpo.location.path != again.location.path
        names = [m.name for m in await hub.list(base_model="small")]
        assert sorted(names) == ["models/org/small-dpo", "models/small-sft"]
        assert [m.name for m in await hub.list(parent_model="small-sft")] == []
        assert [m.name for m in await hub.list(formats=[hub_pb2.MODEL_FORMAT_FULL])] == ["models/small"]
        for i in range(3):
            await hub.upload_dir(adapter, f"extra-{i}", format=hub_pb2.MODEL_FORMAT_PEFT_ADAPTER)
        every = [m.name for m in await hub.list()]
        assert len(every) == 6 and every[0] == "models/extra-2"  # newest first
        pages, token = [], ""
        while True:
            resp = await hub.stub.ListModels(hub_pb2.ListModelsRequest(page_size=4, page_token=token))
            pages.append([m.name for m in resp.models])
            token = resp.next_page_token
            if not token:
                break
        assert [len(p) for p in pages] == [4, 2] and [n for p in pages for n in p] == every
        with pytest.raises(InvalidArgument) as e:
            await hub.list(page_size=-1)
        assert e.value.field_violations[0].field == "page_size"


async def test_upload_with_wrong_hash_registers_nothing(hub_server, small_model):
    h = hub_server()
    async with HubClient(h.settings, h.target) as hub:
        header = hub_pb2.UploadModelHeader(
            model_id="bad", format=hub_pb2.MODEL_FORMAT_FULL,
            files=[hub_pb2.ModelFile(path="config.json", size_bytes=2, sha256="0" * 64)],
        )

        async def reqs():
            yield hub_pb2.UploadModelRequest(header=header)
            yield hub_pb2.UploadModelRequest(chunk=hub_pb2.UploadFileChunk(path="config.json", offset=0, data=b"{}"))

        from swiftmesh.runtime.client import raise_domain_errors

        with pytest.raises(InvalidArgument) as e, raise_domain_errors():
            await hub.stub.UploadModel(reqs())
        assert e.value.reason == "CHECKSUM_MISMATCH"
        assert e.value.field_violations[0].field == "header.files[0].sha256"
        with pytest.raises(NotFound):
            await hub.get("bad")
    assert not any((_cache(h) / "staging").iterdir())


async def test_read_model_file_ranges_and_errors(hub_server, small_model):
    h = hub_server()
    data = (small_model / "model.safetensors").read_bytes()
    async with HubClient(h.settings, h.target) as hub:
        m = await hub.pull(str(small_model))
        chunks = [c async for c in hub.read_file(m.name, "model.safetensors", offset=100, limit=3_000_000, chunk_size=1 << 20)]
        assert [c.offset for c in chunks] == [100, 100 + (1 << 20), 100 + (2 << 20)]
        assert b"".join(c.data for c in chunks) == data[100:3_000_100]
        assert all(c.file_size == len(data) and c.sha256 == sha256_file(small_model / "model.safetensors")
                   for c in chunks)
        tail = [c async for c in hub.read_file(m.name, "model.safetensors", offset=len(data))]
        assert len(tail) == 1 and tail[0].data == b""
        with pytest.raises(NotFound):
            async for _ in hub.read_file(m.name, "nope.bin"):
                pass
        with pytest.raises(InvalidArgument) as e:
            async for _ in hub.read_file(m.name, "model.safetensors", chunk_size=64 << 20):
                pass
        assert e.value.field_violations[0].field == "chunk_size"
        with pytest.raises(InvalidArgument) as e:
            async for _ in hub.read_file(m.name, "model.safetensors", offset=len(data) + 1):
                pass
        assert e.value.field_violations[0].field == "offset"


async def test_pkg_source_is_found_without_importing(hub_server, tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "boobytrap_pkg"
    (pkg / "weights").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('imported!')\n")
    write_model(pkg / "weights" / "m", {"model.safetensors": 2048})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    h = hub_server()
    async with HubClient(h.settings, h.target) as hub:
        m = await hub.pull("pkg://boobytrap_pkg/weights/m")
        assert m.name == "models/m" and {f.path for f in m.files} == {"config.json", "model.safetensors"}
        with pytest.raises(InvalidArgument):
            await hub.pull("pkg://boobytrap_pkg/../../etc/passwd")
        with pytest.raises(NotFound) as e:
            await hub.pull("pkg://no_such_package_xyz/file.gguf")
        assert e.value.reason == "PACKAGE_NOT_FOUND"
    import sys

    assert "boobytrap_pkg" not in sys.modules
