"""swiftmesh.runtime.durable: what gets fsynced, and atomic replacement."""

from __future__ import annotations

import os

import pytest

from swiftmesh.runtime import durable


@pytest.fixture
def synced(monkeypatch):
    """The paths os.fsync was called on (through /proc/self/fd)."""
    seen: list[str] = []
    real = os.fsync

    def record(fd):
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", record)
    return seen


def test_fsync_tree_syncs_every_file_then_the_directories_bottom_up(tmp_path, synced):
    root = tmp_path / "checkpoint-4"
    (root / "sub").mkdir(parents=True)
    (root / "a.bin").write_bytes(b"a")
    (root / "sub" / "b.json").write_text("{}")
    assert durable.fsync_tree(root) == 2
    order = {p: i for i, p in enumerate(synced)}
    assert len(synced) == 5 and synced[-2:] == [str(root), str(tmp_path)]
    assert order[str(root / "sub" / "b.json")] < order[str(root / "sub")]
    assert order[str(root / "a.bin")] < order[str(root)]
    with pytest.raises(FileNotFoundError):
        durable.fsync_tree(tmp_path / "missing")


def test_write_atomic_replaces_whole_or_not_at_all(tmp_path, synced, monkeypatch):
    target = tmp_path / "state" / "data.json"
    durable.write_atomic(target, '{"v": 1}')
    assert target.read_text() == '{"v": 1}'
    assert synced[-1] == str(target.parent)  # the rename is on disk too

    def fail(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="No space"):
        durable.write_atomic(target, b'{"v": 2}')
    assert target.read_text() == '{"v": 1}'
    assert os.listdir(target.parent) == ["data.json"]  # no temporary file left


def test_copy_tree_atomic_shows_the_copy_only_complete(tmp_path, synced):
    src = tmp_path / "local" / "checkpoint-2"
    src.mkdir(parents=True)
    (src / "state.json").write_text("{}")
    dst = tmp_path / "storage" / "checkpoint-2"
    (tmp_path / "storage" / "checkpoint-2.partial").mkdir(parents=True)  # left by a crash
    (tmp_path / "storage" / "checkpoint-2.partial" / "junk").write_text("x")
    durable.copy_tree_atomic(src, dst)
    assert sorted(p.name for p in dst.parent.iterdir()) == ["checkpoint-2"]
    assert [p.name for p in dst.iterdir()] == ["state.json"]
    assert str(dst.parent / "checkpoint-2.partial" / "state.json") in synced  # synced before the rename
    assert synced[-1] == str(dst.parent)
