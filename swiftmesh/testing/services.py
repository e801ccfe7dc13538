"""The one harness that starts SwiftMesh services for tests, benchmarks and examples.

Two ways to run a service, both through the server entry point the CLI uses
(``swiftmesh.cli.common.SERVICE_MODULES[svc].create_service(settings)``):

* :func:`start_in_process` builds the service in this process and serves it on a
  :class:`ServiceLoop` (an asyncio loop in a daemon thread), so synchronous test code, the CLI
  and the OpenAI SDK can call it over loopback while the test reaches its domain objects
  (``InProcessService.service``: the ``runtime.server.Service`` with ``.hub``, ``.manager``,
  ``.pool`` ...). :func:`start_service` does the same on the running loop of an async test.
* :class:`ServiceProcess` runs ``python -m swiftmesh.cli.main serve <svc>`` as a child process
  with exactly the given :class:`~swiftmesh.runtime.config.Settings` (passed as ``SWIFTMESH_*``
  variables), its own log file, and a stop that is SIGTERM then SIGKILL (``kill()`` for kill -9
  tests).

Both wait until the gRPC health service says SERVING (and, for the gateway, until its REST
facade answers ``/health``). :func:`settings_for` gives settings with every service on a free
loopback port under one data directory; :class:`Stack` composes several services on one loop
and stops them in reverse order.

Nothing here imports pytest: fixtures live in the ``conftest.py`` files and call this module.

Why one module of ~590 lines: the in-process starter, the process starter and the stack share
the settings-to-environment translation and the readiness check, and a reader looking for "how
does a test start a service" should find every way in one place (about half is docstrings).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

from pydantic import BaseModel, SecretStr

from swiftmesh.runtime.config import Settings

T = TypeVar("T")

SERVICES = ("hub", "trainer", "aligner", "worker", "gateway")
REPO = Path(__file__).resolve().parents[2]


# Ports and settings ----------------------------------------------------------------------------
def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct free TCP ports on ``host`` ("" : all interfaces), all bound at once so none
    is handed out twice. Another process may still take one before the caller binds it."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port(host: str = "127.0.0.1") -> int:
    """A free TCP port on ``host`` (default loopback)."""
    return free_ports(1, host)[0]


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in overrides.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def settings_for(data_dir: str | Path, **overrides: Any) -> Settings:
    """Settings under ``data_dir`` with every service's gRPC port (and the gateway's HTTP port)
    on a free loopback port and every metrics port off.

    Keyword arguments override as in :meth:`Settings.load`; a dict for a section is merged into
    that section (``hub={"quota_bytes": 1 << 20}`` keeps the free port). Raises ConfigError on
    invalid settings.
    """
    ports = iter(free_ports(len(SERVICES) + 1))
    base: dict[str, Any] = {"data_dir": Path(data_dir)}
    for svc in SERVICES:
        base[svc] = {"port": next(ports), "metrics_port": 0}
    base["gateway"]["http_port"] = next(ports)
    return Settings.load(None, **_merge(base, overrides))


def with_overrides(settings: Settings, **overrides: Any) -> Settings:
    """A copy of ``settings`` with some fields replaced; a dict for a section updates only the
    given fields of that section (``trainer={"ray_address": "ray://..."}``). Not re-validated."""
    update: dict[str, Any] = {}
    for k, v in overrides.items():
        current = getattr(settings, k)
        update[k] = current.model_copy(update=dict(v)) if isinstance(current, BaseModel) and isinstance(v, Mapping) else v
    return settings.model_copy(update=update)


def _encode(value: Any) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return str(value)


def settings_env(settings: Settings) -> dict[str, str]:
    """``SWIFTMESH_*`` environment variables that make ``Settings.load()`` in a child process
    equal ``settings``: ``SWIFTMESH_DATA_DIR`` always, and every field that differs from its
    default (``SWIFTMESH_<SECTION>__<FIELD>``; lists and dicts as JSON, secrets in clear).
    A field set to None where its default is not None cannot be expressed and is left out."""
    env = {"SWIFTMESH_DATA_DIR": str(settings.data_dir)}
    for name, field in type(settings).model_fields.items():
        value = getattr(settings, name)
        if name == "data_dir":
            continue
        if isinstance(value, BaseModel):
            defaults = type(value)()
            for sub in type(value).model_fields:
                v = getattr(value, sub)
                if v is not None and v != getattr(defaults, sub):
                    env[f"SWIFTMESH_{name.upper()}__{sub.upper()}"] = _encode(v)
        elif value is not None and value != field.get_default(call_default_factory=True):
            env[f"SWIFTMESH_{name.upper()}"] = _encode(value)
    return env


def child_env(settings: Settings, extra: Mapping[str, str] | None = None, unset: Iterable[str] = ()) -> dict[str, str]:
    """The environment of a child process that must see exactly ``settings``: this process's
    environment without its ``SWIFTMESH_*`` settings variables and ``SWIFTMESH_CONFIG``, plus
    :func:`settings_env`, plus ``extra``; the names in ``unset`` removed last. Other
    ``SWIFTMESH_*`` variables (e.g. ``SWIFTMESH_MACHINE_ID``) are kept unless unset."""
    prefixes = tuple(f"SWIFTMESH_{f.upper()}" for f in Settings.model_fields)
    env = {k: v for k, v in os.environ.items()
           if k != "SWIFTMESH_CONFIG" and not any(k == p or k.startswith(p + "__") for p in prefixes)}
    env.update(settings_env(settings))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    for k in unset:
        env.pop(k, None)
    return env


# Readiness -------------------------------------------------------------------------------------
def run_sync(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run ``coro`` to completion from synchronous code and return its result: with
    ``asyncio.run`` here, or on a helper thread when this thread already runs an event loop
    (an async test). TimeoutError after ``timeout`` seconds (None: no limit)."""
    if timeout is not None:
        coro = asyncio.wait_for(coro, timeout)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = asyncio.run(coro)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e

    t = threading.Thread(target=target, name="swiftmesh-run-sync", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def http_url(settings: Settings) -> str:
    """Base URL of the gateway's REST facade in ``settings`` (a wildcard bind dialled on loopback)."""
    host = settings.gateway.host
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{host}:{settings.gateway.http_port}"


async def serving(svc: str, target: str, settings: Settings, http: str | None = None) -> bool:
    """Whether the service at ``target`` reports SERVING over gRPC health (and, when ``http``
    is given, the gateway's ``<http>/health`` answers 200). Never raises for a service that is
    not up yet."""
    import httpx

    from swiftmesh.runtime.health import check

    if await check(target, settings, timeout=2.0) != "SERVING":
        return False
    if svc == "gateway" and http:
        try:
            async with httpx.AsyncClient(timeout=2.0) as client:
                return (await client.get(f"{http}/health")).status_code == 200
        except httpx.HTTPError:
            return False
    return True


# In process ------------------------------------------------------------------------------------
class ServiceLoop:
    """An asyncio event loop in a daemon thread that in-process services run on.

    Args:
        name: the thread's name.
    """

    def __init__(self, name: str = "swiftmesh-services") -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 300.0) -> T:
        """Run ``coro`` on the loop and wait for its result (TimeoutError after ``timeout`` s)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        """Stop the loop and join its thread (10 s at most). Services on it should be stopped first."""
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class _Started:
    """What both kinds of started service answer: ``name``, ``port``, ``target`` (``address``)
    and, for the gateway, ``http_url``."""

    name: str
    target: str  # a property of each kind

    @property
    def address(self) -> str:
        """The gRPC address clients dial (``target``)."""
        return self.target

    @property
    def http_url(self) -> str:
        """The gateway's REST base URL ("http://127.0.0.1:<http port>"); ValueError for other services."""
        if self.name != "gateway":
            raise ValueError(f"{self.name} has no HTTP facade")
        return self._http_url()

    def _http_url(self) -> str:
        raise NotImplementedError


class InProcessService(_Started):
    """A SwiftMesh service started in this process by :func:`start_in_process`.

    Attributes:
        name: the service (hub, trainer, aligner, worker, gateway).
        settings: the settings it was built from.
        service: the ``runtime.server.Service`` (domain objects hang off it: ``.hub``,
            ``.manager``, ``.pool``, ``.keys``, ``.runtime``).
        running: the ``runtime.server.RunningServer`` (bound port, ``stop`` coroutine).
        loop: the :class:`ServiceLoop` it is served on.
    """

    def __init__(self, name: str, settings: Settings, service: Any, running: Any, loop: ServiceLoop,
                 owns_loop: bool) -> None:
        self.name = name
        self.settings = settings
        self.service = service
        self.running = running
        self.loop = loop
        self._owns_loop = owns_loop
        self._stopped = False

    @property
    def port(self) -> int:
        """The bound gRPC port."""
        return self.running.port

    @property
    def target(self) -> str:
        """The gRPC address clients dial ("127.0.0.1:<port>")."""
        return self.running.target

    def _http_url(self) -> str:
        return f"http://127.0.0.1:{self.service.http_port}"

    def stop(self, grace: float = 0, timeout: float = 120) -> None:
        """Drain and stop the server (``grace`` s for calls in flight); closes the loop if this
        service started it. Stopping twice does nothing."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self.loop.run(self.running.stop(grace), timeout)
        finally:
            if self._owns_loop:
                self.loop.close()


def _create(svc: str, settings: Settings, **create_kwargs: Any) -> Any:
    from swiftmesh.cli.common import SERVICE_MODULES

    if svc not in SERVICE_MODULES:
        raise ValueError(f"unknown service {svc!r}; choose one of {', '.join(SERVICE_MODULES)}")
    return importlib.import_module(SERVICE_MODULES[svc]).create_service(settings, **create_kwargs)


async def start_service(svc: str, settings: Settings, *, wait: bool = True, timeout: float = 180.0,
                        **create_kwargs: Any) -> Any:
    """Build ``svc`` with the CLI's ``create_service(settings, **create_kwargs)`` and start it on
    the running event loop (for async tests); returns the ``runtime.server.RunningServer``
    (``.target``, ``.service``, ``await .stop(grace)``).

    With ``wait`` it returns once the service reports SERVING (a worker: its model loaded).
    Raises ValueError for an unknown service, TimeoutError when it is not SERVING within
    ``timeout`` s (the server is stopped then), and whatever start-up raises (ConfigError,
    OSError for a taken port).
    """
    from swiftmesh.runtime.server import start_server

    service = _create(svc, settings, **create_kwargs)
    running = await asyncio.wait_for(start_server(service, settings), timeout)
    if wait:
        deadline = time.monotonic() + timeout
        while not service.health.is_serving():
            if time.monotonic() > deadline:
                await running.stop(0)
                raise TimeoutError(f"{svc} on {running.target} was not SERVING after {timeout:.0f} s")
            await asyncio.sleep(0.05)
    return running


def start_in_process(svc: str, settings: Settings, *, loop: ServiceLoop | None = None, wait: bool = True,
                     timeout: float = 180.0, **create_kwargs: Any) -> InProcessService:
    """:func:`start_service` on ``loop`` (a new :class:`ServiceLoop` owned by the service when
    None), for synchronous tests: returns once it is started (and SERVING with ``wait``; the
    gateway's HTTP facade is up by then). Raises as :func:`start_service`."""
    owns = loop is None
    loop = loop or ServiceLoop(f"swiftmesh-{svc}")
    try:
        running = loop.run(start_service(svc, settings, wait=wait, timeout=timeout, **create_kwargs), timeout + 30)
    except BaseException:
        if owns:
            loop.close()
        raise
    return InProcessService(svc, settings, running.service, running, loop, owns)


# As a process ----------------------------------------------------------------------------------
class ServiceProcess(_Started):
    """``python -m swiftmesh.cli.main serve <svc>`` as a child process with ``settings``.

    Args:
        svc: hub, trainer, aligner, worker or gateway.
        settings: what the child loads (passed by :func:`child_env`); its section of ``svc``
            says the port, and clients use it to dial the child.
        log: file the child's stdout and stderr are appended to (default
            ``<data_dir>/logs/<svc>-<port>.log``).
        env: extra environment variables (e.g. a Ray token, ``OMP_NUM_THREADS``).
        unset: variables removed from the child's environment (default ``RAY_ADDRESS``: a
            service finds Ray through its settings).
        argv: the command instead of ``swiftmesh serve <svc>`` (a test server module that
            reads the same settings).
        new_session: start the child in a session of its own (so a test's Ctrl-C does not
            reach it, and :meth:`stop` can end its process group).
    """

    def __init__(self, svc: str, settings: Settings, *, log: str | Path | None = None,
                 env: Mapping[str, str] | None = None, unset: Iterable[str] = ("RAY_ADDRESS",),
                 argv: list[str] | None = None, new_session: bool = True) -> None:
        self.name = svc
        self.settings = settings
        self.endpoint = settings.endpoint(svc)
        self.log = Path(log) if log else settings.data_dir / "logs" / f"{svc}-{self.endpoint.port}.log"
        self.env = child_env(settings, env, unset)
        self.argv = argv or [sys.executable, "-m", "swiftmesh.cli.main", "serve", svc]
        self.new_session = new_session
        self.proc: subprocess.Popen | None = None

    def start(self) -> ServiceProcess:
        """Start the child (again, after it ended); returns self without waiting for it."""
        if self.alive:
            return self
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=fh, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=str(REPO), start_new_session=self.new_session)
        return self

    @property
    def port(self) -> int:
        """The gRPC port from the settings."""
        return self.endpoint.port

    @property
    def target(self) -> str:
        """The gRPC address clients dial."""
        return self.endpoint.target

    def _http_url(self) -> str:
        return http_url(self.settings)

    @property
    def pid(self) -> int | None:
        """The child's process id (None before :meth:`start`)."""
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        """Whether the child runs."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """The child's exit status (None while it runs or before it started)."""
        return self.proc.poll() if self.proc is not None else None

    def log_tail(self, chars: int = 3000) -> str:
        """The last ``chars`` characters of the log ("" when there is none)."""
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 180.0) -> ServiceProcess:
        """Wait until the child is SERVING (gRPC health; for the gateway its ``/health`` too).
        Starts it if needed. RuntimeError, with the log's tail, if it exits or is not SERVING
        within ``timeout`` s. Callable from async tests (it never blocks on this thread's loop
        from inside it). Returns self."""
        self.start()
        http = http_url(self.settings) if self.name == "gateway" else None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"{self.name} exited {self.returncode}:\n{self.log_tail()}")
            if run_sync(serving(self.name, self.target, self.settings, http), 10):
                return self
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} was not SERVING on {self.target} after {timeout:.0f} s:\n{self.log_tail()}")

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the child (e.g. SIGTERM to watch it drain); nothing if it is not running."""
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(sig)

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait up to ``timeout`` s (None: forever) for the child to exit; its exit status (None
        if it never started). subprocess.TimeoutExpired if it still runs."""
        return self.proc.wait(timeout) if self.proc is not None else None

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (the service drains), then SIGKILL to its process group after ``timeout`` s.
        Returns the exit status (None if it never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill_group()
                self.proc.wait(30)
        return self.proc.returncode

    def _kill_group(self) -> None:
        assert self.proc is not None
        try:
            if self.new_session:
                os.killpg(self.proc.pid, signal.SIGKILL)
            else:
                self.proc.kill()
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self) -> None:
        """SIGKILL the child now (kill -9: no drain) and reap it. Nothing if it is not running."""
        if self.alive:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(30)

    def __enter__(self) -> Self:
        return self.start().wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# Several ---------------------------------------------------------------------------------------
class Stack:
    """Several services on one :class:`ServiceLoop` (in process) and as child processes, all
    built from one :class:`Settings`; :meth:`stop` stops them in reverse order of starting.

    ``stack["hub"]`` is the started service of that name. ``stack.hub(fn)`` (also ``trainer``,
    ``aligner``, ``gateway``, ``jobs``) runs ``await fn(client)`` with a client of that service.

    Args:
        settings: the settings every service is started with (unless one is given its own).
    """

    _CLIENTS: ClassVar[dict[str, tuple[str, str]]] = {
        "hub": ("swiftmesh.clients.hub", "HubClient"),
        "trainer": ("swiftmesh.clients.trainer", "TrainerClient"),
        "aligner": ("swiftmesh.clients.aligner", "AlignerClient"),
        "gateway": ("swiftmesh.clients.gateway", "GatewayClient"),
        "jobs": ("swiftmesh.clients.jobs", "JobsClient"),
    }

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = ServiceLoop()
        self.services: dict[str, InProcessService | ServiceProcess] = {}
        self._order: list[InProcessService | ServiceProcess] = []

    def __getitem__(self, name: str) -> InProcessService | ServiceProcess:
        return self.services[name]

    def start(self, svc: str, settings: Settings | None = None, *, name: str | None = None,
              **kwargs: Any) -> InProcessService:
        """Start ``svc`` in process on the stack's loop (see :func:`start_in_process`) and
        register it as ``name`` (default ``svc``)."""
        s = start_in_process(svc, settings or self.settings, loop=self.loop, **kwargs)
        self.services[name or svc] = s
        self._order.append(s)
        return s

    def spawn(self, svc: str, settings: Settings | None = None, *, name: str | None = None, wait: bool = True,
              **kwargs: Any) -> ServiceProcess:
        """Start ``svc`` as a :class:`ServiceProcess` (keyword arguments go to it), waiting
        until it is SERVING unless ``wait`` is false; registered as ``name`` (default ``svc``)."""
        p = ServiceProcess(svc, settings or self.settings, **kwargs).start()
        self.services[name or svc] = p
        self._order.append(p)
        if wait:
            p.wait_ready()
        return p

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 900) -> T:
        """Run a client coroutine to completion from this (synchronous) thread."""
        return run_sync(coro, timeout)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 300) -> T:
        """Run a coroutine on the services' own loop (to touch their domain objects)."""
        return self.loop.run(coro, timeout)

    def client(self, kind: str, fn: Callable[[Any], Coroutine[Any, Any, T]], timeout: float = 900,
               target: str | None = None) -> T:
        """``await fn(client)`` with a client of ``kind`` (hub, trainer, aligner, gateway, jobs)
        on the stack's settings (or at ``target``), from this thread."""
        module, cls = self._CLIENTS[kind]
        client_cls = getattr(importlib.import_module(module), cls)

        async def go() -> T:
            async with client_cls(self.settings, target) as c:
                return await fn(c)

        return self.run(go(), timeout)

    def hub(self, fn: Callable[[Any], Coroutine[Any, Any, T]], timeout: float = 600) -> T:
        """``await fn(HubClient)``."""
        return self.client("hub", fn, timeout)

    def trainer(self, fn: Callable[[Any], Coroutine[Any, Any, T]], timeout: float = 900) -> T:
        """``await fn(TrainerClient)``."""
        return self.client("trainer", fn, timeout)

    def aligner(self, fn: Callable[[Any], Coroutine[Any, Any, T]], timeout: float = 900) -> T:
        """``await fn(AlignerClient)``."""
        return self.client("aligner", fn, timeout)

    def stop(self, grace: float = 0) -> None:
        """Stop every service, last started first (errors of one do not keep the others
        running), then close the loop."""
        try:
            for s in reversed(self._order):
                with contextlib.suppress(Exception):  # stop the rest regardless
                    s.stop(grace) if isinstance(s, InProcessService) else s.stop()
        finally:
            self._order.clear()
            self.loop.close()
