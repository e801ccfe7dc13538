"""Durability of the hub's cache (issue 14): fsync at every commit point, a full disk during a
pull (a real 2 MiB tmpfs), partial downloads counted against the quota while they grow, stale
partial files swept, honest resume figures when a server ignores Range."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from swiftmesh.clients.hub import HubClient
from swiftmesh.hub.v1 import hub_pb2
from swiftmesh.runtime.errors import ResourceExhausted, Unavailable
from tests.hub.helpers import write_model
from tests.hub.http_fixtures import FileServer


def _parts(cache: Path) -> list[Path]:
    return sorted((cache / "tmp").glob("*.part*"))


def _blobs(cache: Path) -> list[Path]:
    return [p for p in (cache / "blobs").rglob("*") if p.is_file()]


def _pattern(n: int) -> bytes:
    return bytes(range(251)) * (n // 251) + bytes(n % 251)


async def test_pull_and_upload_fsync_blobs_snapshot_and_their_directories(hub_server, small_model, monkeypatch):
    synced: list[str] = []  # paths at the time of the fsync
    inodes: set[tuple[int, int]] = set()  # files move (partial -> staging -> snapshot): their inodes
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        st = os.fstat(fd)
        inodes.add((st.st_dev, st.st_ino))
        real_fsync(fd)

    h = hub_server()
    cache = h.settings.hub_cache_dir
    monkeypatch.setattr(os, "fsync", recording_fsync)
    async with HubClient(h.settings, h.target) as hub:
        pulled = await hub.pull(str(small_model))
        upload = write_model(small_model.parent / "up", {"adapter.safetensors": 5000}, seed=7)
        uploaded = await hub.upload_dir(upload, "up", format=hub_pb2.MODEL_FORMAT_FULL)
    for m in (pulled, uploaded):
        snap = Path(m.location.path)
        for f in m.files:
            blob = cache / "blobs" / "sha256" / f.sha256[:2] / f.sha256
            st = blob.stat()
            assert (st.st_dev, st.st_ino) in inodes, f.path  # its bytes
            assert str(blob.parent) in synced  # its name
        st = snap.stat()
        assert (st.st_dev, st.st_ino) in inodes and str(snap.parent) in synced  # the snapshot and its rename


@pytest.fixture
def small_fs(tmp_path):
    """A 2 MiB tmpfs (needs root); unmounted at the end."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                       check=False, capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


async def test_disk_full_during_a_pull_is_resource_exhausted_and_leaves_the_cache_usable(
        small_fs, hub_server, tmp_path):
    big = write_model(tmp_path / "src" / "big", {"model.safetensors": 3 << 20})
    small = write_model(tmp_path / "src" / "small", {"model.safetensors": 100 << 10}, seed=1)
    srv = FileServer({"/u/model.safetensors": _pattern(3 << 20)}).start()
    srv.no_length.add("/u/model.safetensors")
    cache = small_fs / "hub"
    config_sha = hashlib.sha256((big / "config.json").read_bytes()).hexdigest()
    h = hub_server(hub={"cache_dir": str(cache)})
    try:
        async with HubClient(h.settings, h.target) as hub:
            # known size: refused before the transfer; unannounced: when the disk fills during it
            for source, what in ((str(big), "more bytes needed"), (f"{srv.base}/u/model.safetensors", "no space")):
                with pytest.raises(ResourceExhausted) as e:
                    await hub.pull(source, model_id="big", format=hub_pb2.MODEL_FORMAT_FULL)
                assert e.value.reason == "DISK_FULL", e.value.message
                assert str(cache / "tmp") in e.value.message and "bytes free" in e.value.message
                assert what in e.value.message
                assert _parts(cache) == []  # the partial file is gone
                assert {b.name for b in _blobs(cache)} <= {config_sha}  # complete files stay, by hash
                assert not any((cache / "staging").iterdir())
                assert await hub.list() == []  # the database still answers
            m = await hub.pull(str(small))  # ... and takes writes
            assert [x.name for x in await hub.list()] == [m.name]
    finally:
        srv.stop()


async def test_partial_downloads_count_against_the_quota_while_they_grow(hub_server, tmp_path):
    srv = FileServer({"/a/config.json": b"{}", "/a/model.safetensors": _pattern(6 << 20),
                      "/b/config.json": b"{}", "/b/model.safetensors": _pattern(3 << 20)[::-1],
                      "/u/model.safetensors": _pattern(12 << 20)}).start()
    srv.no_length.add("/u/model.safetensors")
    h = hub_server(hub={"quota_bytes": 8 << 20, "download_retries": 0})
    cache = h.settings.hub_cache_dir
    try:
        async with HubClient(h.settings, h.target) as hub:
            # a pull cut off at 5 MiB leaves its partial file (kept for resume) ...
            srv.cuts["/a/model.safetensors"] = 5 << 20
            a = f"{srv.base}/a/manifest.json"
            srv.routes["/a/manifest.json"] = b'{"files": [{"path": "config.json"}, {"path": "model.safetensors"}]}'
            with pytest.raises(Unavailable):
                await hub.pull(a, model_id="a")
            assert sum(p.stat().st_size for p in _parts(cache) if p.suffix == ".part") == 5 << 20
            # ... which counts: 5 MiB partial + 3 MiB more does not fit 8 MiB with the 2 bytes of config
            srv.routes["/b/manifest.json"] = b'{"files": [{"path": "config.json"}, {"path": "model.safetensors"}]}'
            with pytest.raises(ResourceExhausted) as e:
                await hub.pull(f"{srv.base}/b/manifest.json", model_id="b")
            assert e.value.reason == "QUOTA_EXCEEDED"
            # resuming needs only the missing 1 MiB (not counted twice)
            m = await hub.pull(a, model_id="a")
            assert m.size_bytes == (6 << 20) + 2
            await hub.delete("a")
            # a file whose size the server does not announce is stopped as it grows past the quota
            with pytest.raises(ResourceExhausted) as e:
                await hub.pull(f"{srv.base}/u/model.safetensors", model_id="u", format=hub_pb2.MODEL_FORMAT_FULL)
            assert e.value.reason == "QUOTA_EXCEEDED"
            assert _parts(cache) == [] and _blobs(cache) == []  # no partial, no orphan blob
    finally:
        srv.stop()


async def test_stale_partial_downloads_are_swept_unless_a_transfer_holds_them(hub_server, tmp_path):
    h = hub_server(hub={"partial_max_age_s": 60})
    hub = h.service.hub
    tmp = hub.store.tmp_dir
    old, young, held = (tmp / f"{k}.part" for k in ("src-old", "src-young", "src-held"))
    for p in (old, young, held):
        p.write_bytes(b"x" * 100)
        p.with_name(p.name + ".json").write_text("{}")
    hour_ago = time.time() - 3600
    for p in (old, held):
        os.utime(p, (hour_ago, hour_ago))
    lock = hub.store.fetch_lock("src-held")
    lock.acquire()
    try:
        hub.housekeeping()
    finally:
        lock.release()
    assert sorted(p.name for p in tmp.iterdir()) == ["src-held.part", "src-held.part.json",
                                                     "src-young.part", "src-young.part.json"]


async def test_a_server_ignoring_range_is_not_reported_as_a_resume(hub_server, tmp_path):
    data = _pattern(4 << 20)
    srv = FileServer({"/r/model.safetensors": data}).start()
    h = hub_server(hub={"download_retries": 0})
    src = f"{srv.base}/r/model.safetensors"
    try:
        async with HubClient(h.settings, h.target) as hub:
            srv.cuts["/r/model.safetensors"] = 3 << 20
            with pytest.raises(Unavailable):
                await hub.pull(src, model_id="r", format=hub_pb2.MODEL_FORMAT_FULL)
            srv.ignore_range.add("/r/model.safetensors")
            seen: list = []
            m = await hub.pull(src, model_id="r", format=hub_pb2.MODEL_FORMAT_FULL, on_progress=seen.append)
            assert m.size_bytes == len(data)
            assert [r for r in srv.gets("/r/model.safetensors") if r[2]], "the second pull asked for a range"
            assert max(p.bytes_resumed for p in seen) == 0  # nothing was kept: no resume
            assert max(p.bytes_done for p in seen) <= len(data)
    finally:
        srv.stop()


async def test_disk_full_during_an_upload_is_resource_exhausted_every_time(small_fs, hub_server, tmp_path):
    # the files cannot fit: the hub refuses while the client streams; the client must get
    # DISK_FULL every time, not grpc aio's INTERNAL "Internal error from Core" (grpc/grpc#36066)
    big = write_model(tmp_path / "up", {"model.safetensors": 6 << 20})
    cache = small_fs / "hub"
    h = hub_server(hub={"cache_dir": str(cache)})
    async with HubClient(h.settings, h.target) as hub:
        for _ in range(8):
            with pytest.raises(ResourceExhausted) as e:
                await hub.upload_dir(big, "big", format=hub_pb2.MODEL_FORMAT_FULL)
            assert e.value.reason == "DISK_FULL" and "bytes free" in e.value.message
        assert await hub.list() == []
    assert not any((cache / "staging").iterdir())
