"""Fixtures of the hub tests: in-process hubs, hub subprocesses, nginx on loopback, small
model directories (helpers in tests/hub/helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.hub.helpers import HubProcess, HubThread, write_model
from tests.hub.nginx_server import Nginx, nginx_binary


@pytest.fixture
def hub_server(make_settings):
    """Factory: start an in-process hub; every one started is stopped at the end."""
    started: list[HubThread] = []

    def start(**overrides) -> HubThread:
        hub = {"download_retries": 2}
        hub.update(overrides.pop("hub", {}))
        settings = make_settings(hub=hub, **overrides)
        h = HubThread(settings)
        started.append(h)
        return h

    yield start
    for h in started:
        try:
            h.stop()
        except Exception:  # noqa: BLE001
            pass


@pytest.fixture
def hub_process(tmp_path, free_port):
    procs: list[HubProcess] = []

    def start(data_dir: Path, **hub_env) -> HubProcess:
        p = HubProcess(data_dir, free_port(), tmp_path / f"hub-{len(procs)}.log", **hub_env)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.stop()


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
