"""Helpers of the hub tests: model directories, in-process hubs (own event loop in a thread)
and hub subprocesses (`swiftmesh serve hub`, for kill -9)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


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


class HubThread:
    """A hub server on its own event loop in a daemon thread (so sync code and the CLI can call it)."""

    def __init__(self, settings) -> None:
        from swiftmesh.services.hub.server import create_service

        self.settings = settings
        self.service = create_service(settings)
        self.hub = self.service.hub
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        from swiftmesh.runtime.server import start_server

        self.running = asyncio.run_coroutine_threadsafe(start_server(self.service, settings), self.loop).result(30)

    @property
    def target(self) -> str:
        return self.running.target

    def stop(self, grace: float = 0) -> None:
        asyncio.run_coroutine_threadsafe(self.running.stop(grace), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class HubProcess:
    """`swiftmesh serve hub` in a subprocess (so a test can kill -9 it)."""

    def __init__(self, data_dir: Path, port: int, log: Path, **hub_env: str) -> None:
        env = {**os.environ, "SWIFTMESH_DATA_DIR": str(data_dir), "SWIFTMESH_HUB__PORT": str(port),
               "SWIFTMESH_HUB__METRICS_PORT": "0", "PYTHONUNBUFFERED": "1"}
        for k, v in hub_env.items():
            env[f"SWIFTMESH_HUB__{k.upper()}"] = str(v)
        self.port = port
        self.log = log
        self._log_fh = open(log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "swiftmesh.cli.main", "serve", "hub"],
            stdout=self._log_fh, stderr=subprocess.STDOUT, env=env, cwd=str(REPO),
        )

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 60) -> HubProcess:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            if "hub serving on" in self.log.read_text(errors="replace"):
                return self
            time.sleep(0.1)
        raise RuntimeError(f"hub did not start: {self.log.read_text()[-3000:]}")

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_fh.close()
