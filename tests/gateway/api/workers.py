"""Engine worker processes for the routing tests (killable with SIGKILL)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from swiftmesh.clients.gateway import WorkerClient

ROOT = Path(__file__).resolve().parents[3]


def spawn_worker(stack, port: int, log_path: Path) -> subprocess.Popen:
    """``swiftmesh serve worker`` serving the stack's model (a local directory) on ``port``."""
    env = os.environ.copy()
    env.update({
        "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        "SWIFTMESH_DATA_DIR": str(log_path.parent / f"worker-{port}"),
        "SWIFTMESH_WORKER__PORT": str(port),
        "SWIFTMESH_WORKER__METRICS_PORT": "0",
        "SWIFTMESH_WORKER__MODEL": str(stack.model_dir),
        "SWIFTMESH_WORKER__DEVICE": "cpu",
        "SWIFTMESH_TELEMETRY__LOG_LEVEL": "WARNING",
        "OMP_NUM_THREADS": "1",
    })
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "swiftmesh.cli.main", "serve", "worker"], env=env,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT)
    proc.log_path = log_path  # type: ignore[attr-defined]
    return proc


def _tail(proc: subprocess.Popen) -> str:
    path = getattr(proc, "log_path", None)
    return path.read_text(errors="replace")[-2000:] if path and path.exists() else ""


def wait_worker(stack, port: int, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    """Wait until the worker at ``port`` is ready and serves the stack's model."""

    async def ready() -> bool:
        try:
            async with WorkerClient(stack.settings, f"127.0.0.1:{port}") as w:
                status = await w.status(timeout=2.0)
            return status.ready and any(m.id == stack.model for m in status.models)
        except Exception:  # noqa: BLE001 - not up yet
            return False

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"worker on port {port} exited with {proc.returncode}: {_tail(proc)}")
        if asyncio.run(ready()):
            return
        time.sleep(0.3)
    pytest.fail(f"worker on port {port} not ready after {timeout}s")
