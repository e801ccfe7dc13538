"""Helpers of the hub tests: model directories and file hashes (hubs are started by
swiftmesh.testing.services, see tests/hub/conftest.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def write_model(root: Path, sizes: dict[str, int], seed: int = 0) -> Path:
    """A model directory: config.json plus files of the given sizes (deterministic bytes)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(f'{{"model_type": "llama", "seed": {seed}}}')
    for name, size in sizes.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        block = hashlib.sha256(f"{seed}:{name}".encode()).digest() * 2048  # 64 KiB pattern
        with open(p, "wb") as f:
            left = size
            i = 0
            while left > 0:
                piece = hashlib.sha256(block[:64] + i.to_bytes(8, "little")).digest() + block[32:]
                f.write(piece[:left])
                left -= len(piece[:left])
                i += 1
    return root
