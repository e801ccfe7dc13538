"""The whole SwiftMesh suite deployed as a platform team deploys it, for the chain tests.

Five processes, one per service (``swiftmesh serve <svc>`` through
:class:`swiftmesh.testing.services.ServiceProcess`), each with its own data directory, its own
certificate from ``swiftmesh certs`` (:func:`swiftmesh.runtime.certs.make_dev_pki`), the shared
service token and ``tls.require_client_cert``; the gateway requires API keys; the hub imports
local paths only under ``hub.local_source_roots``. The trainer, aligner and worker run with a
``SWIFTMESH_MACHINE_ID`` of their own, so for the hub they are other machines: they get model
files through its ReadModelFile stream, never from its cache directory. The trainer and the
aligner each start an embedded 2-CPU Ray on the first job (the Ray workers inherit the
service's environment, machine id included).

The test process is the operator: :attr:`Chain.operator` holds its settings (the token and an
``operator`` certificate of the same CA). One stack for the whole package (``scope="package"``):
starting it took 50-110 s on a busy 2-core machine (five interpreters importing torch at once, two
embedded Ray heads), stopping it about 16 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import warnings
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

TOKEN = "chain-token-0123456789abcdef"
SERVICES = ("hub", "trainer", "aligner", "worker", "gateway")
# Services that run as if on another machine than the hub.
MACHINE_IDS = {"trainer": "chain-trainer", "aligner": "chain-aligner", "worker": "chain-worker"}
METRIC = "swiftmesh_grpc_server_handled_total"


@dataclass
class Chain:
    """The started suite.

    Attributes:
        root: its temporary directory (certs, per-service data directories, datasets).
        certs: the PKI directory (``ca.pem``, ``<name>.pem`` / ``<name>.key``).
        settings: each service's own settings (data directory, certificate).
        operator: the test's settings as a client (token and the ``operator`` certificate).
        processes: the ServiceProcess of each service.
        models_dir: the one directory the hub may import local paths from.
    """

    root: Path
    certs: Path
    settings: dict[str, Any]
    operator: Any
    processes: dict[str, Any]
    models_dir: Path
    stack: Any = None
    notes: dict[str, Any] = field(default_factory=dict)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 900) -> T:
        """Run a client coroutine from the (synchronous) test."""
        from swiftmesh.testing.services import run_sync

        return run_sync(coro, timeout)

    def client(self, kind: str, fn: Callable[[Any], Coroutine[Any, Any, T]], settings: Any = None,
               target: str | None = None, timeout: float = 900) -> T:
        """``await fn(client)`` with a SwiftMesh client of ``kind`` (hub, trainer, aligner, jobs,
        gateway, worker) on ``settings`` (default: the operator's), dialling ``target`` (default:
        the service's address)."""
        import importlib

        module, cls = CLIENTS[kind]
        client_cls = getattr(importlib.import_module(module), cls)
        settings = settings or self.operator
        svc = {"jobs": "trainer"}.get(kind, kind)
        target = target or settings.endpoint(svc).target

        async def go() -> T:
            async with client_cls(settings, target) as c:
                return await fn(c)

        return self.run(go(), timeout)

    def metrics_url(self, svc: str) -> str:
        """Where the service's Prometheus metrics are (the gateway's are on its HTTP port)."""
        s = self.settings[svc]
        if svc == "gateway":
            return f"http://127.0.0.1:{s.gateway.http_port}/metrics"
        return f"http://127.0.0.1:{s.endpoint(svc).metrics_port}/metrics"

    def handled(self, svc: str) -> dict[tuple[str, str], float]:
        """``{(grpc_method, grpc_code): count}`` of the calls the service's gRPC server completed
        (``swiftmesh_grpc_server_handled_total``, refused calls included)."""
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(self.metrics_url(svc), timeout=10).text
        out: dict[tuple[str, str], float] = {}
        for fam in text_string_to_metric_families(text):
            for sample in fam.samples:
                if sample.name == METRIC and sample.labels.get("service") == svc:
                    key = (sample.labels["grpc_method"], sample.labels["grpc_code"])
                    out[key] = out.get(key, 0.0) + sample.value
        return out

    def as_client(self, *, token: str | None = TOKEN, cert: str | None = "operator") -> Any:
        """The operator's settings with another token (None: none) or certificate (None: no client
        certificate, TLS with the CA only)."""
        from swiftmesh.testing.services import with_overrides

        tls = {"cert_file": self.certs / f"{cert}.pem", "key_file": self.certs / f"{cert}.key"} if cert else \
            {"cert_file": None, "key_file": None}
        from pydantic import SecretStr

        return with_overrides(self.operator, auth_token=SecretStr(token) if token else None, tls=tls)


CLIENTS = {
    "hub": ("swiftmesh.clients.hub", "HubClient"),
    "trainer": ("swiftmesh.clients.trainer", "TrainerClient"),
    "aligner": ("swiftmesh.clients.aligner", "AlignerClient"),
    "jobs": ("swiftmesh.clients.jobs", "JobsClient"),
    "gateway": ("swiftmesh.clients.gateway", "GatewayClient"),
    "worker": ("swiftmesh.clients.gateway", "WorkerClient"),
}


def chain_settings(root: Path, certs: Path, models_dir: Path) -> tuple[dict[str, Any], Any]:
    """Each service's settings and the operator's: one configuration (ports, token, mTLS, API keys,
    local roots), a data directory and a certificate per process."""
    from swiftmesh.testing.services import free_ports, settings_for, with_overrides

    ports = iter(free_ports(4))
    base = settings_for(
        root / "operator",
        auth_token=TOKEN,
        tls={"enabled": True, "require_client_cert": True, "ca_file": certs / "ca.pem"},
        hub={"metrics_port": next(ports), "local_source_roots": [models_dir]},
        trainer={"metrics_port": next(ports), "ray_num_cpus": 2},
        aligner={"metrics_port": next(ports), "ray_num_cpus": 2},
        worker={"metrics_port": next(ports), "device": "cpu", "dtype": "float32"},
        gateway={"require_api_key": True, "health_check_interval_s": 0.5},
    )

    def own(name: str, data_dir: Path) -> Any:
        return with_overrides(base, data_dir=data_dir,
                              tls={"cert_file": certs / f"{name}.pem", "key_file": certs / f"{name}.key"})

    return {svc: own(svc, root / svc) for svc in SERVICES}, own("operator", root / "operator")


def end_leftovers(root: Path) -> list[str]:
    """SIGKILL every process still running with a data directory under ``root`` (those this
    fixture started, and theirs: the embedded Ray heads); ``["pid command", ...]`` of those."""
    marker = f"SWIFTMESH_DATA_DIR={root}/".encode()
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes()
            if marker not in env or int(pid) == os.getpid():
                continue
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            os.kill(int(pid), signal.SIGKILL)
            out.append(f"{pid} {Path(cmd).name}")
        except (OSError, ValueError):
            continue
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="package")
def chain(tmp_path_factory, tiny_model_dir) -> Iterator[Chain]:
    """The five services started in parallel and SERVING (the worker without a model yet);
    stopped (SIGTERM, then SIGKILL) after the package's last test."""
    import shutil

    from swiftmesh.runtime.certs import make_dev_pki
    from swiftmesh.testing.services import Stack

    root = tmp_path_factory.mktemp("chain")
    certs = root / "certs"
    make_dev_pki(certs, [*SERVICES, "operator"])
    models_dir = root / "models"
    shutil.copytree(tiny_model_dir, models_dir / "tiny")
    settings, operator = chain_settings(root, certs, models_dir)
    stack = Stack(operator)
    chain = Chain(root, certs, settings, operator, {}, models_dir, stack)
    try:
        for svc in SERVICES:
            env = {"SWIFTMESH_MACHINE_ID": MACHINE_IDS[svc]} if svc in MACHINE_IDS else {}
            unset = ("RAY_ADDRESS",) if env else ("RAY_ADDRESS", "SWIFTMESH_MACHINE_ID")
            chain.processes[svc] = stack.spawn(svc, settings[svc], wait=False, env=env, unset=unset,
                                               log=root / "logs" / f"{svc}.log")
        for svc in SERVICES:
            chain.processes[svc].wait_ready(timeout=300)
        yield chain
    finally:
        # SIGTERM to all at once: they drain in parallel (the trainer and aligner end their Ray).
        # Wait for them before the harness's stop, which would signal a draining service again.
        for p in chain.processes.values():
            p.send_signal(signal.SIGTERM)
        for p in chain.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(90)
        stack.stop()
        left = end_leftovers(root)
        if left:
            warnings.warn(f"tests/chain: {len(left)} processes outlived the services' stop and were killed: {left}",
                          stacklevel=1)
