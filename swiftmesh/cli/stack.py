"""`swiftmesh serve`, `swiftmesh up` and `swiftmesh status`: running the services."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import httpx
import psutil
import typer
from rich.table import Table

from swiftmesh.cli.common import SERVICE_MODULES, console, err_console, fail, settings_from
from swiftmesh.runtime.config import Settings
from swiftmesh.runtime.health import check

STACK_ORDER = ["hub", "trainer", "aligner", "worker", "gateway"]


def serve(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(help="hub | trainer | aligner | gateway | worker")],
    host: Annotated[str | None, typer.Option(help="Bind address (default from settings: 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="gRPC port (0: any free port).")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Prometheus /metrics port (0: off).")] = None,
    database_url: Annotated[str | None, typer.Option(help=(
        "The service's database, a SQLAlchemy URL (e.g. postgresql+psycopg://user@host/db for replicas "
        "sharing one store; default: SQLite under the data dir)."))] = None,
    redis_url: Annotated[str | None, typer.Option(help=(
        "Shared rate-limit storage, e.g. redis://host:6379 (default: in memory, per process)."))] = None,
) -> None:
    """Run one service in the foreground until SIGTERM or Ctrl-C, then drain gracefully.

    Each service runs on its own, so a platform team can deploy one without the others;
    it finds the others through the settings (e.g. SWIFTMESH_HUB__ADDRESS=hub:50051).
    """
    if service not in SERVICE_MODULES:
        fail(f"unknown service {service!r}; choose one of {', '.join(SERVICE_MODULES)}", 2)
    section = {k: v for k, v in {"host": host, "port": port, "metrics_port": metrics_port,
                                 "database_url": database_url, "redis_url": redis_url}.items() if v is not None}
    fields = Settings.model_fields[service].annotation.model_fields
    for flag in ("database_url", "redis_url"):
        if flag in section and flag not in fields:
            fail(f"--{flag.replace('_', '-')}: the {service} service has no {flag} setting", 2)
    settings = settings_from(ctx, **({service: section} if section else {}))
    from swiftmesh.runtime.server import serve as run_server
    from swiftmesh.runtime.telemetry import setup_logging

    setup_logging(service, settings.telemetry.log_level, settings.telemetry.log_format)
    module = importlib.import_module(SERVICE_MODULES[service])

    def ready(running) -> None:
        print(f"{service} serving on {running.target}", flush=True)

    from swiftmesh.runtime.config import ConfigError

    try:
        asyncio.run(run_server(module.create_service(settings), settings, ready=ready))
    except ConfigError as e:
        fail(str(e), 2)


def _targets(settings: Settings, services: list[str]) -> dict[str, str]:
    return {s: settings.endpoint(s).target for s in services}


async def _health_all(settings: Settings, services: list[str]) -> dict[str, str]:
    targets = _targets(settings, services)
    results = await asyncio.gather(*(check(t, settings) for t in targets.values()))
    out = dict(zip(targets, results))
    if "gateway" in out and out["gateway"] == "SERVING":
        url = f"http://{_http_host(settings)}:{settings.gateway.http_port}/health"
        try:
            async with httpx.AsyncClient(timeout=3) as client:
                r = await client.get(url)
            if r.status_code != 200:
                out["gateway"] = f"HTTP {r.status_code}"
        except httpx.HTTPError:
            out["gateway"] = "HTTP UNREACHABLE"
    return out


def _http_host(settings: Settings) -> str:
    h = settings.gateway.host
    return "127.0.0.1" if h in ("0.0.0.0", "::", "") else h


def _endpoint_rows(settings: Settings, services: list[str], health: dict[str, str]) -> Table:
    table = Table(title="SwiftMesh services")
    table.add_column("service")
    table.add_column("endpoint")
    table.add_column("metrics")
    table.add_column("health")
    for s in services:
        ep = settings.endpoint(s)
        target = f"grpc://{ep.target}"
        metrics = f"http://{ep.target.rsplit(':', 1)[0]}:{ep.metrics_port}/metrics" if ep.metrics_port else ""
        if s == "gateway":
            base = f"http://{_http_host(settings)}:{settings.gateway.http_port}"
            target = f"{base}/v1 (OpenAI API), grpc://{ep.target} (admin)"
            metrics = f"{base}/metrics"
        status = health.get(s, "?")
        color = "green" if status == "SERVING" else "red"
        table.add_row(s, target, metrics, f"[{color}]{status}[/{color}]")
    return table


def status(
    ctx: typer.Context,
    service: Annotated[list[str] | None, typer.Option("--service", "-s", help="Only these services.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show each service's health (gRPC health protocol; HTTP /health for the gateway).

    Exits 0 when every service asked about is SERVING, 1 otherwise.
    """
    settings = settings_from(ctx)
    services = service or STACK_ORDER
    for s in services:
        if s not in SERVICE_MODULES:
            fail(f"unknown service {s!r}", 2)
    health = asyncio.run(_health_all(settings, services))
    if as_json:
        console.print_json(json.dumps({s: {"target": settings.endpoint(s).target, "health": h} for s, h in health.items()}))
    else:
        console.print(_endpoint_rows(settings, services, health))
    if not all(h == "SERVING" for h in health.values()):
        raise typer.Exit(1)


class Stack:
    """Child processes of `swiftmesh up`, each in its own process group, logs under data_dir/logs."""

    def __init__(self, settings: Settings, services: list[str], config: str | None) -> None:
        self.settings = settings
        self.services = services
        self.config = config
        self.procs: dict[str, subprocess.Popen] = {}
        self.log_dir = settings.data_dir / "logs"
        self._known: dict[int, psutil.Process] = {}
        # Extra environment for the children (e.g. SWIFTMESH_WORKER__ENGINE=vllm).
        self.extra_env: dict[str, str] = {}

    def env(self) -> dict[str, str]:
        """The environment of the service processes: data dir, config file and the worker list for the gateway."""
        env = os.environ.copy()
        env.update(self.extra_env)
        env["SWIFTMESH_DATA_DIR"] = str(self.settings.data_dir)
        if self.config:
            env["SWIFTMESH_CONFIG"] = str(Path(self.config).absolute())
        if "worker" in self.services and not self.settings.gateway.workers and "SWIFTMESH_GATEWAY__WORKERS" not in env:
            env["SWIFTMESH_GATEWAY__WORKERS"] = json.dumps([self.settings.worker.target])
        return env

    def start(self) -> None:
        """Start every service as ``swiftmesh serve <svc>`` in its own session, logging to ``<log_dir>/<svc>.log``."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = self.env()
        for name in self.services:
            with open(self.log_dir / f"{name}.log", "ab") as log:
                self.procs[name] = subprocess.Popen(
                    [sys.executable, "-m", "swiftmesh.cli.main", "serve", name],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )

    def remember_descendants(self) -> None:
        """Record the services and their children (Ray, engines) so stop can reap them all."""
        for p in self.procs.values():
            try:
                proc = psutil.Process(p.pid)
                for d in [proc, *proc.children(recursive=True)]:
                    self._known[d.pid] = d
            except psutil.NoSuchProcess:
                pass

    def dead(self) -> dict[str, int]:
        """The services that have exited: name -> return code."""
        return {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}

    def log_tail(self, name: str, lines: int = 15) -> str:
        """The last ``lines`` lines of a service log ("" before it exists)."""
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, grace: float) -> None:
        """SIGTERM every service (they drain), wait, then SIGKILL whatever is left of their trees."""
        self.remember_descendants()
        for p in self.procs.values():
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace + 20
        for p in self.procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p in self.procs.values():
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if p.poll() is None:
                p.kill()
                p.wait()
        for proc in self._known.values():
            try:
                if proc.is_running():
                    proc.kill()
            except psutil.NoSuchProcess:
                pass


class StackError(RuntimeError):
    """A service of the stack exited or did not become healthy; the message has its log tail."""


def wait_healthy(stack: Stack, settings: Settings, services: list[str], timeout: float,
                 stop_requested=lambda: False) -> dict[str, str]:
    """Poll the services' health until all are SERVING. Raises StackError (with log tails) when
    one exits or ``timeout`` seconds pass; returns early (not all healthy) if ``stop_requested()``."""
    health: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    with console.status("starting services ...") as spinner:
        while not stop_requested():
            if dead := stack.dead():
                raise StackError("; ".join(
                    f"{name} exited with code {rc}; last log lines:\n{stack.log_tail(name)}" for name, rc in dead.items()))
            health = asyncio.run(_health_all(settings, services))
            waiting = [s for s, h in health.items() if h != "SERVING"]
            if not waiting:
                return health
            if time.monotonic() > deadline:
                raise StackError(f"not healthy after {timeout:.0f}s: {', '.join(waiting)}\n" + "\n".join(
                    f"{name} log:\n{stack.log_tail(name)}" for name in waiting))
            spinner.update(f"starting services ... waiting for {', '.join(waiting)}")
            time.sleep(0.5)
    return health


def up(
    ctx: typer.Context,
    service: Annotated[
        list[str] | None,
        typer.Option("--service", "-s", help="Start only these (default: hub, trainer, aligner, worker, gateway)."),
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="State, caches and logs (default ~/.swiftmesh).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for every service to be healthy.")] = 300.0,
    check_only: Annotated[
        bool, typer.Option("--check", help="Start, check every service is healthy, stop; exit 0 when all were.")
    ] = False,
) -> None:
    """Start every service and one engine worker on localhost with embedded defaults
    (local Ray, SQLite state, a cache under the data dir), print the endpoints, and stop
    everything cleanly on Ctrl-C. Logs go to `<data-dir>/logs/<service>.log`."""
    settings = settings_from(ctx, **({"data_dir": data_dir} if data_dir else {}))
    services = service or STACK_ORDER
    for s in services:
        if s not in SERVICE_MODULES:
            fail(f"unknown service {s!r}", 2)
    stack = Stack(settings, services, (ctx.find_root().obj or {}).get("config"))
    stop_requested = False

    def on_signal(signum, frame) -> None:
        nonlocal stop_requested
        stop_requested = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        stack.start()
        try:
            health = wait_healthy(stack, settings, services, timeout, lambda: stop_requested)
        except StackError as e:
            err_console.print(f"[red]{e}[/red]")
            code = 1
        if code == 0 and not stop_requested:
            stack.remember_descendants()
            console.print(_endpoint_rows(settings, services, health))
            console.print(f"logs: {stack.log_dir}")
            if check_only:
                console.print("[green]all services healthy[/green]")
            else:
                console.print("Press Ctrl-C to stop.")
                while not stop_requested:
                    if dead := stack.dead():
                        for name, rc in dead.items():
                            err_console.print(f"[red]{name} exited with code {rc}[/red]:\n{stack.log_tail(name)}")
                        code = 1
                        break
                    time.sleep(0.5)
                    stack.remember_descendants()
    finally:
        console.print("stopping services ...")
        stack.stop(settings.shutdown_grace_s)
        for s, h in old.items():
            signal.signal(s, h)
        console.print("stopped")
    if code:
        raise typer.Exit(code)
