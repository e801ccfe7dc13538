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
    env = os.environ.copy()
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "tests.gateway.api._fake_worker", str(port)], env=env,
                                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


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
            pytest.fail(f"worker on port {port} exited with {proc.returncode}")
        if asyncio.run(ready()):
            return
        time.sleep(0.3)
    pytest.fail(f"worker on port {port} not ready after {timeout}s")
