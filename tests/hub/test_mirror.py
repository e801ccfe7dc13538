"""Hub to hub: a second hub (own cache dir) mirrors a model from the first through ReadModelFile
(``hub://`` source) and resumes after a network cut; ``materialize`` uses the cache directly on
the same host and mirrors (resuming partial files, verifying hashes) otherwise."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from swiftmesh.services.hub.hub import BYTES_SERVED

from swiftmesh.clients import hub as hub_client
from swiftmesh.clients.hub import HubClient
from swiftmesh.clients.hub_blocking import materialize_sync
from swiftmesh.hub.v1 import hub_pb2
from swiftmesh.runtime.errors import DataLoss, NotFound, Unavailable
from tests.hub.helpers import sha256_file, write_model
from tests.hub.tcp_proxy import CuttingProxy

SIZE = 24 << 20
CHUNK = 4 << 20  # the chunk size hub:// transfers ask for


def _served() -> float:
    return BYTES_SERVED._value.get()


async def test_second_hub_mirrors_through_read_model_file_and_resumes_after_a_cut(hub_server, tmp_path):
    src = write_model(tmp_path / "src" / "mirrored", {"model.safetensors": SIZE})
    a = hub_server(data_dir=tmp_path / "a")
    async with HubClient(a.settings, a.target) as hub:
        ma = await hub.pull(str(src))
        upload = await hub.upload_dir(src, "org/adapter", format=hub_pb2.MODEL_FORMAT_PEFT_ADAPTER,
                                      lineage={"base_model": "mirrored"})
    proxy = CuttingProxy(a.target, cut_after=10 << 20)
    b = hub_server(data_dir=tmp_path / "b", hub={"download_retries": 0})
    b_cache = b.settings.hub_cache_dir
    source = f"hub://{proxy.address}/mirrored"
    try:
        async with HubClient(b.settings, b.target) as hub:
            with pytest.raises(Unavailable):
                await hub.pull(source)
            assert proxy.cut_done.is_set()
            partial = sum(p.stat().st_size for p in (b_cache / "tmp").glob("*.part"))
            assert 0 < partial < SIZE
            with pytest.raises(NotFound):
                await hub.get("mirrored")
            opened = len(proxy.downstream)
            seen = []
            mb = await hub.pull(source, on_progress=seen.append)
            assert {f.path: f.sha256 for f in mb.files} == {f.path: f.sha256 for f in ma.files}
            assert mb.format == ma.format and mb.source == source
            assert Path(mb.location.path).is_relative_to(b_cache)
            for f in mb.files:
                assert sha256_file(Path(mb.location.path) / f.path) == f.sha256
            second = sum(proxy.downstream[opened:])
            missing = SIZE - partial
            assert missing <= second <= missing + CHUNK + (256 << 10), (second, missing)
            assert max(p.bytes_resumed for p in seen) >= partial
            # the format and the files of an adapter carry over too
            mu = await hub.pull(f"hub://{a.target}/org/adapter")
            assert mu.name == "models/org/adapter" and mu.format == hub_pb2.MODEL_FORMAT_PEFT_ADAPTER
            assert {f.sha256 for f in mu.files} == {f.sha256 for f in upload.files}
    finally:
        proxy.close()


async def test_materialize_same_host_uses_the_cache_and_mirrors_elsewhere(hub_server, tmp_path, monkeypatch):
    src = write_model(tmp_path / "src" / "mat", {"model.safetensors": 6 << 20, "nested/tokenizer.json": 5000})
    a = hub_server()
    async with HubClient(a.settings, a.target) as hub:
        m = await hub.pull(str(src))
        assert await hub.materialize("mat") == Path(m.location.path)

        monkeypatch.setattr(hub_client, "machine_id", lambda: "another-host:0")
        dest_root = tmp_path / "mirror"
        partial = dest_root / "mat" / "model.safetensors.partial"
        partial.parent.mkdir(parents=True)
        partial.write_bytes((src / "model.safetensors").read_bytes()[: 5 << 20])
        (dest_root / "mat" / "stale.bin").write_bytes(b"old")
        before = _served()
        out = await hub.materialize("mat", dest_root)
        served = _served() - before
        assert out == dest_root / "mat"
        assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
            ".swiftmesh-mirror.json", "config.json", "model.safetensors", "nested/tokenizer.json"]
        for f in m.files:
            assert sha256_file(out / f.path) == f.sha256
        rest = m.size_bytes - (5 << 20)
        assert served == rest, (served, rest)  # the partial file was resumed, not fetched again
        # up to date: nothing transferred
        before = _served()
        assert await hub.materialize("mat", dest_root) == out
        assert _served() == before
        # a damaged mirror file is fetched again
        os.chmod(out / "config.json", 0o644)
        (out / "config.json").write_text("{}")
        await hub.materialize("mat", dest_root)
        assert sha256_file(out / "config.json") == sha256_file(src / "config.json")

    # the sync helper (threads, Ray workers) runs its own loop
    monkeypatch.setattr(hub_client, "machine_id", lambda: "another-host:0")
    path = await asyncio.to_thread(materialize_sync, a.settings, "mat", tmp_path / "sync-mirror")
    assert sha256_file(path / "model.safetensors") == sha256_file(src / "model.safetensors")


async def test_materialize_of_a_corrupt_file_is_data_loss_and_leaves_nothing_half_written(
        hub_server, tmp_path, monkeypatch):
    src = write_model(tmp_path / "src" / "bad", {"model.safetensors": 3 << 20})
    a = hub_server()
    async with HubClient(a.settings, a.target) as hub:
        m = await hub.pull(str(src))
        cached = Path(m.location.path) / "model.safetensors"  # a hard link to the blob: both change
        os.chmod(cached, 0o644)
        with open(cached, "r+b") as f:  # one flipped chunk, same size
            f.seek(2 << 20)
            f.write(b"\x00" * 4096)
        monkeypatch.setattr(hub_client, "machine_id", lambda: "another-host:0")
        dest_root = tmp_path / "mirror"
        with pytest.raises(DataLoss) as e:
            await hub.materialize("bad", dest_root)
        assert "model.safetensors" in e.value.message and "sha256" in e.value.message
        left = sorted(p.relative_to(dest_root / "bad").as_posix() for p in (dest_root / "bad").rglob("*"))
        assert "model.safetensors" not in left and not any(p.endswith(".partial") for p in left), left
