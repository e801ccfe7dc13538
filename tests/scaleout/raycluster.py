"""A real multi-node Ray cluster on this machine, for the scale-out tests.

Each node is one ``ray start --block`` process started in a session of its own
(``start_new_session``) with its own ``--temp-dir``, free ports and environment, so that a
node can be stopped alone: :meth:`RayNode.stop` ends exactly the processes of that session
and those holding files under its temp dir (never a bare ``ray stop``, which would end every
Ray cluster of this user on the machine). Nodes get a token of their own (``RAY_AUTH_MODE=token``)
instead of the shared ``~/.ray/auth_token``.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from swiftmesh.testing.services import free_ports as harness_free_ports

RAY_CLI = [sys.executable, "-c", "import sys; from ray.scripts.scripts import main; sys.exit(main())"]
STARTED = "Ray runtime started"


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on every interface (Ray binds them all)."""
    return harness_free_ports(n, host="")


def _session_pids(sid: int) -> list[int]:
    """PIDs of the processes in session ``sid`` (field 6 of /proc/<pid>/stat)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 3 and int(fields[3]) == sid:
            out.append(int(entry))
    return out


def _end(pids, grace: float) -> None:
    """SIGTERM the processes ``pids()`` lists, SIGKILL those still listed after ``grace`` s, and
    wait (5 s at most) until it lists none."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        current = pids()
        if not current:
            break
        for pid in current:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and pids():
            time.sleep(0.2)


class RayNode:
    """One Ray node (head or worker) as a ``ray start --block`` child process.

    Args:
        name: a short label (log file name).
        temp_dir: the node's own Ray temp dir (keep it short: Ray's Unix sockets live under it).
        num_cpus: CPUs the node offers.
        resources: custom resources of the node (they tell the nodes apart).
        env: extra environment of the node's processes (e.g. ``SWIFTMESH_MACHINE_ID``).
        head: the head node to join (None: this node is the head).
    """

    def __init__(self, name: str, temp_dir: Path, *, num_cpus: int, resources: dict[str, float] | None = None,
                 env: dict[str, str] | None = None, head: RayNode | None = None) -> None:
        self.name = name
        self.temp_dir = Path(temp_dir)
        self.num_cpus = num_cpus
        self.resources = resources or {}
        self.env = env or {}
        self.head = head
        self.port, self.client_port = free_ports(2) if head is None else (0, 0)
        self.log = self.temp_dir.parent / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def client_address(self) -> str:
        """The Ray Client address of the head (what the SwiftMesh deploy manifests use)."""
        return f"ray://127.0.0.1:{self.client_port}"

    def start(self, timeout: float = 240.0) -> RayNode:
        """Start the node; returns once ``ray start`` reports the runtime started. RuntimeError
        (with the log's tail) if it exits or does not come up within ``timeout`` s."""
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env}
        env.pop("RAY_ADDRESS", None)
        for k in ("SWIFTMESH_MACHINE_ID", "SWIFTMESH_DATA_DIR"):
            if k not in self.env:
                env.pop(k, None)
        deadline = time.monotonic() + timeout
        for attempt in range(3):  # a port taken by someone else between choosing and binding: retry
            ports = free_ports(6)
            cmd = [
                *RAY_CLI, "start", "--block", f"--temp-dir={self.temp_dir}", f"--num-cpus={self.num_cpus}",
                "--num-gpus=0", f"--object-store-memory={256 << 20}", "--disable-usage-stats",
                f"--node-manager-port={ports[0]}", f"--object-manager-port={ports[1]}",
                f"--metrics-export-port={ports[2]}", f"--dashboard-agent-listen-port={ports[3]}",
                f"--dashboard-agent-grpc-port={ports[4]}", f"--runtime-env-agent-port={ports[5]}",
            ]
            if self.resources:
                cmd.append(f"--resources={json.dumps(self.resources)}")
            if self.head is None:
                cmd += ["--head", f"--port={self.port}", f"--ray-client-server-port={self.client_port}",
                        "--include-dashboard=false"]
            else:
                cmd.append(f"--address={self.head.gcs_address}")
            fh = open(self.log, "wb")  # noqa: SIM115  (the child keeps writing to it)
            self.proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
            fh.close()
            while time.monotonic() < deadline:
                text = self.log.read_text(errors="replace")
                if STARTED in text:
                    return self
                if self.proc.poll() is not None:
                    break
                time.sleep(0.2)
            else:
                self.stop()
                raise RuntimeError(f"ray node {self.name} did not start in {timeout:.0f} s: {text[-3000:]}")
            self.stop()
            if attempt == 2 or "port" not in text:
                raise RuntimeError(f"ray node {self.name} exited {self.proc.returncode}: {text[-3000:]}")
            if self.head is None:
                self.port, self.client_port = free_ports(2)
        raise AssertionError("unreachable")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pids(self) -> list[int]:
        """Every live process of this node: its session, and anything holding files under its temp dir."""
        from swiftmesh.jobkit.ray_runtime import ray_processes_using

        pids = set(_session_pids(self.proc.pid)) if self.proc is not None else set()
        if self.temp_dir.is_dir():
            pids |= set(ray_processes_using(str(self.temp_dir)))
        pids.discard(os.getpid())
        return sorted(pids)

    def stop(self, grace: float = 5.0) -> None:
        """Stop this node alone: SIGTERM to its session's processes, SIGKILL after ``grace`` s
        to whatever is left (its session, and processes holding files under its temp dir)."""
        if self.proc is None:
            return
        _end(self.pids, grace)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass


class RayCluster:
    """Nodes started by a test; :meth:`stop` ends all of them (use it in a finalizer)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        token = secrets.token_hex(32)
        # A token of the cluster's own; the trainer and every node get it.
        self.auth_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
        self.base_env = {
            **self.auth_env,
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
            "RAY_TRAIN_V2_ENABLED": "1",
            "DS_ACCELERATOR": "cpu",
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            # Notice a lost node within seconds, not ~30 s.
            "RAY_health_check_period_ms": "1000",
            "RAY_health_check_timeout_ms": "1000",
            "RAY_health_check_failure_threshold": "3",
        }
        self.nodes: list[RayNode] = []
        self.head: RayNode | None = None

    def add(self, name: str, *, num_cpus: int, resources: dict[str, float] | None = None,
            env: dict[str, str] | None = None) -> RayNode:
        """Start a node (the first one is the head) and return it once it runs."""
        node = RayNode(name, self.root / name, num_cpus=num_cpus, resources=resources,
                       env={**self.base_env, **(env or {})}, head=self.head)
        self.nodes.append(node)
        node.start()
        if self.head is None:
            self.head = node
        return node

    def leftover_pids(self) -> list[int]:
        from swiftmesh.jobkit.ray_runtime import ray_processes_using

        pids: set[int] = set()
        for n in self.nodes:
            pids |= set(n.pids())
        pids |= set(ray_processes_using(str(self.root))) if self.root.is_dir() else set()
        pids.discard(os.getpid())
        return sorted(pids)

    def stop(self, grace: float = 5.0) -> None:
        """Stop every node at once (SIGTERM, then SIGKILL after ``grace`` s) and SIGKILL anything
        left holding files under the cluster's root."""
        _end(self.leftover_pids, grace)
        for n in self.nodes:
            if n.proc is not None:
                try:
                    n.proc.wait(5)
                except subprocess.TimeoutExpired:
                    pass
