"""Fixtures of the hub tests: in-process hubs and hub subprocesses (swiftmesh.testing.services),
nginx on loopback, small model directories (helpers in tests/hub/helpers.py)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from swiftmesh.testing.services import InProcessService, ServiceProcess, settings_for, start_in_process
from tests.hub.helpers import write_model
from tests.hub.nginx_server import Nginx, nginx_binary


@pytest.fixture
def hub_server(make_settings):
    """Factory: start an in-process hub (``InProcessService``: ``.target``, ``.settings``,
    ``.service.hub``); every one started is stopped at the end."""
    started: list[InProcessService] = []

    def start(**overrides) -> InProcessService:
        hub = {"download_retries": 2}
        hub.update(overrides.pop("hub", {}))
        h = start_in_process("hub", make_settings(hub=hub, **overrides))
        started.append(h)
        return h

    yield start
    for h in started:
        with contextlib.suppress(Exception):
            h.stop()


@pytest.fixture
def hub_process(tmp_path):
    """Factory: ``hub_process(data_dir, **hub_settings)`` starts ``swiftmesh serve hub`` on a free
    port (a ``ServiceProcess``; ``.wait_ready()``, ``.kill()`` for kill -9); stopped at the end."""
    procs: list[ServiceProcess] = []

    def start(data_dir: Path, **hub) -> ServiceProcess:
        p = ServiceProcess("hub", settings_for(data_dir, hub=hub), log=tmp_path / f"hub-{len(procs)}.log",
                           new_session=False).start()
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.stop(15)


@pytest.fixture
def nginx():
    """Factory: ``nginx(root, rate=None)`` starts nginx serving root; stopped at the end."""
    if nginx_binary() is None:
        pytest.fail("nginx is not installed: apt-get install -y nginx (scripts/setup.sh --dev installs it)")
    started: list[Nginx] = []

    def start(root: Path, rate: str | None = None, extra_locations: str = "") -> Nginx:
        n = Nginx(root, rate=rate, extra_locations=extra_locations).start()
        started.append(n)
        return n

    yield start
    for n in started:
        n.stop()


@pytest.fixture
def small_model(tmp_path) -> Path:
    """config.json + model.safetensors (3 MiB) + tokenizer.json (10 KiB)."""
    return write_model(tmp_path / "src" / "small", {"model.safetensors": 3 << 20, "tokenizer.json": 10 << 10})
