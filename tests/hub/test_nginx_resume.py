"""A real nginx on loopback (Range support, rate-limited so transfers take seconds) and real
hub processes (`swiftmesh serve hub`):

* kill -9 of the hub in the middle of a large file; a new hub on the same cache resumes: the
  model completes with matching hashes, nginx's access log shows that the second hub fetched
  at most what was missing plus one chunk, and no partial, staging or orphan file is left;
* 8 concurrent pulls of one model through two hub processes sharing a cache: each file crosses
  the wire exactly once.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from swiftmesh.clients.hub import HubClient
from swiftmesh.runtime.config import Settings
from swiftmesh.runtime.errors import SwiftMeshError
from tests.hub.helpers import sha256_file, write_model

CHUNK = 1 << 20  # what a resumed transfer may repeat at most


def _client_settings(tmp_path: Path) -> Settings:
    return Settings.load(None, data_dir=tmp_path / "client")


def _partial_bytes(cache: Path) -> int:
    return sum(p.stat().st_size for p in (cache / "tmp").glob("*.part"))


def _blob_bytes(cache: Path) -> int:
    return sum(p.stat().st_size for p in (cache / "blobs").rglob("*") if p.is_file())


async def test_kill9_mid_file_then_resume_fetches_only_the_missing_bytes(tmp_path, nginx, hub_process):
    root = tmp_path / "www"
    model = write_model(root / "big", {"model-00001.safetensors": 2 << 20, "model-00002.safetensors": 40 << 20})
    total = sum(p.stat().st_size for p in model.iterdir())
    ng = nginx(root, rate="12m")  # 12 MB/s per connection: the large file takes ~3.5 s
    data_dir = tmp_path / "data"
    cache = data_dir / "hub"
    url = ng.url("big/")

    first = hub_process(data_dir).wait_ready()
    client = _client_settings(tmp_path)

    async def pull(target: str, seen: list):
        async with HubClient(client, target) as hub:
            return await hub.pull(url, format=1, on_progress=seen.append)

    task = asyncio.ensure_future(pull(first.target, []))
    deadline = time.time() + 30
    while _partial_bytes(cache) < 8 << 20:  # well inside the 40 MiB file
        assert time.time() < deadline, "the pull made no progress"
        assert not task.done(), task
        await asyncio.sleep(0.02)
    first.kill()
    try:
        await task
        raise AssertionError("the pull should have failed with its hub killed")
    except SwiftMeshError:
        pass
    await asyncio.sleep(0.5)  # nginx logs the aborted request
    on_disk = _partial_bytes(cache) + _blob_bytes(cache)
    assert 8 << 20 <= on_disk < total

    second = hub_process(data_dir).wait_ready()
    seen: list = []
    m = await pull(second.target, seen)
    assert {f.path: f.sha256 for f in m.files} == {p.name: sha256_file(p) for p in model.iterdir()}
    for f in m.files:
        assert sha256_file(Path(m.location.path) / f.path) == f.sha256
    resumed = max(p.bytes_resumed for p in seen)
    assert resumed >= 8 << 20
    pid = second.proc.pid
    fetched = sum(e["bytes"] for e in ng.log_entries() if e["method"] == "GET" and f"pid {pid})" in e["ua"])
    missing = total - on_disk
    assert missing <= fetched <= missing + CHUNK, (fetched, missing)
    ranged = [e for e in ng.log_entries() if f"pid {pid})" in e["ua"] and e["range"]]
    assert ranged and ranged[0]["status"] == 206
    # nothing half-written or orphaned is left: no partial file, no staging, every blob in use
    assert list((cache / "tmp").iterdir()) == []
    assert [p for p in (cache / "staging").iterdir() if not p.name.startswith(".")] == []
    blobs = [p for p in (cache / "blobs").rglob("*") if p.is_file()]
    assert len(blobs) == len(m.files) and all(p.stat().st_nlink > 1 for p in blobs)


async def test_eight_concurrent_pulls_over_two_processes_transfer_each_file_once(tmp_path, nginx, hub_process):
    root = tmp_path / "www"
    model = write_model(root / "shared", {"a.safetensors": 6 << 20, "b.safetensors": 6 << 20, "tok.json": 4096})
    ng = nginx(root, rate="8m")
    data_dir = tmp_path / "data"
    hubs = [hub_process(data_dir), hub_process(data_dir)]
    for h in hubs:
        h.wait_ready()
    client = _client_settings(tmp_path)
    following: list[bool] = []

    async def pull(target: str):
        async with HubClient(client, target) as hub:
            return await hub.pull(ng.url("shared/"), on_progress=lambda p: following.append(p.following))

    results = await asyncio.gather(*(pull(hubs[i % 2].target) for i in range(8)))
    assert len({m.location.path for m in results}) == 1
    assert {f.path: f.sha256 for f in results[0].files} == {p.name: sha256_file(p) for p in model.iterdir()}
    gets: dict[str, int] = {}
    for e in ng.log_entries():
        if e["method"] == "GET" and not e["uri"].endswith("/"):
            gets[e["uri"]] = gets.get(e["uri"], 0) + 1
    assert gets == {"/shared/a.safetensors": 1, "/shared/b.safetensors": 1, "/shared/config.json": 1,
                    "/shared/tok.json": 1}
    assert any(following)  # the other requests followed the one transfer


async def test_a_pull_whose_clients_all_left_stops_and_a_later_pull_resumes(tmp_path, nginx, hub_server):
    root = tmp_path / "www"
    model = write_model(root / "slow", {"model.safetensors": 16 << 20})
    ng = nginx(root, rate="8m")
    h = hub_server()
    cache = h.settings.hub_cache_dir

    async def pull(seen: list):
        async with HubClient(h.settings, h.target) as hub:
            return await hub.pull(ng.url("slow/"), on_progress=seen.append)

    first: list = []
    task = asyncio.ensure_future(pull(first))
    deadline = time.time() + 20
    while _partial_bytes(cache) < 2 << 20:
        assert time.time() < deadline and not task.done()
        await asyncio.sleep(0.02)
    task.cancel()  # the only client goes away
    deadline = time.time() + 10
    while h.service.hub.puller.jobs:  # the pull notices and stops
        assert time.time() < deadline, "the pull kept running without clients"
        await asyncio.sleep(0.05)
    kept = _partial_bytes(cache)
    await asyncio.sleep(0.3)
    assert _partial_bytes(cache) == kept > 0  # stopped, partial file kept
    async with HubClient(h.settings, h.target) as hub:
        assert await hub.list() == []
    seen: list = []
    m = await pull(seen)
    assert {f.path: f.sha256 for f in m.files} == {p.name: sha256_file(p) for p in model.iterdir()}
    assert max(p.bytes_resumed for p in seen) >= kept
