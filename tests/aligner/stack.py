"""In-process hub + aligner (+ trainer) servers for the aligner's service tests: each service on
one event loop in a daemon thread, one embedded 2-CPU Ray shared by the job managers."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settings_for(data_dir: Path):
    from swiftmesh.runtime.config import Settings

    return Settings.load(
        None,
        data_dir=data_dir,
        hub={"port": free_port(), "metrics_port": 0},
        trainer={"port": free_port(), "metrics_port": 0, "ray_num_cpus": 2},
        aligner={"port": free_port(), "metrics_port": 0, "ray_num_cpus": 2},
        worker={"port": free_port(), "metrics_port": 0},
        gateway={"port": free_port(), "http_port": free_port(), "metrics_port": 0},
    )


class ServerThread:
    """Services on their own event loop in a daemon thread (tests call them over gRPC)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.running = []

    def start(self, service, settings):
        from swiftmesh.runtime.server import start_server

        r = asyncio.run_coroutine_threadsafe(start_server(service, settings), self.loop).result(120)
        self.running.append(r)
        return r

    def call(self, coro, timeout: float = 120):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        for r in reversed(self.running):
            try:
                self.call(r.stop(0), 120)
            except Exception:  # noqa: BLE001
                pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class Stack:
    def __init__(self, settings, threads: ServerThread, services: dict) -> None:
        self.settings = settings
        self.threads = threads
        self.services = services

    def manager(self, name: str = "aligner"):
        return self.services[name].service.manager

    def run(self, coro, timeout: float = 900):
        """Run a client coroutine on a fresh loop in this thread."""
        return asyncio.run(asyncio.wait_for(coro, timeout))

    def aligner(self, fn, timeout: float = 900):
        from swiftmesh.clients.aligner import AlignerClient

        async def go():
            async with AlignerClient(self.settings) as a:
                return await fn(a)

        return self.run(go(), timeout)

    def hub(self, fn, timeout: float = 600):
        from swiftmesh.clients.hub import HubClient

        async def go():
            async with HubClient(self.settings) as h:
                return await fn(h)

        return self.run(go(), timeout)

    def stop(self) -> None:
        self.threads.stop()


def start_stack(data_dir: Path, *, trainer: bool = False) -> Stack:
    """Hub and aligner (and the trainer when asked) on loopback, sharing one embedded Ray."""
    from swiftmesh.jobkit.ray_runtime import RayRuntime
    from swiftmesh.services.aligner.server import create_service as aligner_service
    from swiftmesh.services.hub.server import create_service as hub_service

    settings = settings_for(data_dir)
    threads = ServerThread()
    services = {"hub": threads.start(hub_service(settings), settings)}
    runtime = RayRuntime(None, 2)
    if trainer:
        from swiftmesh.services.trainer.server import create_service as trainer_service

        services["trainer"] = threads.start(trainer_service(settings, runtime=runtime), settings)
    services["aligner"] = threads.start(aligner_service(settings, runtime=runtime), settings)
    return Stack(settings, threads, services)
