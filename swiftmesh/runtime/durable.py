"""Durable files: what a commit point needs so that a file or directory survives a crash or a
power cut once the code goes on as if it had (blobs, manifests, checkpoints, state files).

``write`` puts data in the page cache only; ``os.fsync`` on the file puts it on disk, and an
``fsync`` of the directory puts the directory entry (the file's name, a rename) there (see
fsync(2): "Calling fsync() does not necessarily ensure that the entry in the directory
containing the file has also reached disk. For that an explicit fsync() on a file descriptor for
the directory is also needed."). :func:`write_atomic` is the usual pattern: a temporary file in the
same directory, fsync, rename over the target, fsync the directory, so readers see the old or the
new content, never a part.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path


def fsync_file(path: str | Path) -> None:
    """fsync one regular file (its data and metadata). Raises OSError (e.g. ENOENT)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """fsync a directory, so the names created, renamed or removed in it are on disk. Raises OSError."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | Path, *, parent: bool = True) -> int:
    """fsync every file under ``root`` and every directory after the files and directories in
    it (bottom-up, ``root`` last), then (``parent``) the directory holding ``root``. Symbolic links are not followed. Returns the
    number of files synced. Raises OSError (e.g. ENOENT when ``root`` is missing)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such directory", str(root))
    files = 0
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                fsync_file(p)
                files += 1
        fsync_dir(dirpath)
    if parent:
        fsync_dir(root.absolute().parent)
    return files


def write_atomic(path: str | Path, data: bytes | str, *, encoding: str = "utf-8") -> None:
    """Replace ``path`` with ``data`` all at once and durably: write ``<path>.tmp-<pid>`` in the same
    directory, fsync it, rename it over ``path``, fsync the directory. Creates the directory.
    Raises OSError (the temporary file is removed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    raw = data.encode(encoding) if isinstance(data, str) else data
    try:
        with open(tmp, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def copy_tree_atomic(src: str | Path, dst: str | Path) -> None:
    """Copy the directory ``src`` to ``dst`` so that ``dst`` appears only complete and on disk:
    copied to ``<dst>.partial`` (an old one removed first), fsynced, then renamed to ``dst`` (an
    existing ``dst`` is replaced) and the parent directory fsynced. Raises OSError
    (``<dst>.partial`` may be left; the next call removes it)."""
    import shutil

    dst = Path(dst)
    partial = dst.with_name(dst.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(src, partial)
    fsync_tree(partial, parent=False)
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(partial, dst)
    fsync_dir(dst.parent)
