"""The service's connection to Ray: an existing cluster, or an embedded local head.

:class:`RayRuntime` connects to the cluster ``RAY_ADDRESS`` or the service's ``ray_address``
setting names (retrying Ray Client connects), else starts an embedded head with
``ray start --head`` in a child process, under a per-service temp directory
(:func:`default_temp_dir`) whose processes it can find (:func:`ray_processes_using`) and end
(:func:`end_stale_ray_processes`), including those a killed service left behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from swiftmesh.jobkit.kinds import ClusterResources

log = logging.getLogger("swiftmesh.jobkit.ray_runtime")

RAY_NAMESPACE = "swiftmesh"


class RayRuntime:
    """The service's connection to Ray (lazy: connects on first use, thread-safe).

    Args:
        address: a Ray cluster address ("auto", "ray://host:10001", "host:6379"); None:
            ``$RAY_ADDRESS`` if set, else an embedded local Ray.
        num_cpus: CPUs of the embedded local Ray (0: all of the machine's).
    """

    def __init__(self, address: str | None = None, num_cpus: int = 0, temp_dir: str | None = None) -> None:
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.num_cpus = num_cpus
        # Embedded Ray's session directory root: one per service state directory, so what a
        # killed service left behind can be found and ended on the next start (short: Ray's
        # Unix socket paths live under it).
        self.temp_dir = temp_dir
        self._lock = threading.Lock()
        self._started_here = False
        self._connected = False

    @property
    def embedded(self) -> bool:
        """Whether Ray is (to be) started here rather than reached at ``address``."""
        return self.address is None

    def ensure(self) -> None:
        """Connect (or start the embedded Ray) once; later calls return at once.

        Sets the environment Ray and the workers need (Ray Train v2, no usage stats, offline
        hub access and CPU DeepSpeed by default in workers, the OpenTelemetry exporter settings).

        Raises:
            RuntimeError: the embedded head did not start (3 tries; the message holds
                ``ray start``'s output).
            Exception: Ray's own error when the cluster cannot be reached (after 4 tries).
        """
        import ray

        with self._lock:
            if self._connected and ray.is_initialized():
                return
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
            os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
            # A loaded machine can take longer than Ray's default 30 s to bring its GCS up.
            os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "180")
            # Workers inherit these through the runtime env of the driver.
            env = {k: os.environ[k] for k in ("DS_ACCELERATOR", "TOKENIZERS_PARALLELISM", "HF_HUB_OFFLINE") if k in os.environ}
            # The OpenTelemetry exporter settings, so the workers' spans (the artifact upload)
            # reach the same collector as the service's own (OTEL_SERVICE_NAME stays per process).
            env.update({k: v for k, v in os.environ.items() if k.startswith("OTEL_") and k != "OTEL_SERVICE_NAME"})
            env.setdefault("DS_ACCELERATOR", "cpu")
            env.setdefault("TOKENIZERS_PARALLELISM", "false")
            # Workers get models from the hub (materialize), never from the internet.
            env.setdefault("HF_HUB_OFFLINE", "1")
            env.setdefault("RAY_TRAIN_V2_ENABLED", "1")
            if ray.is_initialized():
                self._connected = True
                return
            kwargs: dict[str, Any] = {
                "namespace": RAY_NAMESPACE,
                "log_to_driver": False,
                "runtime_env": {"env_vars": env},
            }
            if self.address:
                os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
                self._connect(ray, kwargs)
            else:
                address = self._start_local_head()
                self._started_here = True
                # Ray's C++ failure handler would take SIGTERM from the service (dump a stack and
                # die) before its graceful drain; the service handles its own signals.
                os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
                ray.init(address=address, **kwargs)
            self._connected = True

    def _connect(self, ray, kwargs: dict[str, Any], attempts: int = 4) -> None:
        """Connect to the cluster at ``self.address``, retrying failed connects.

        A Ray Client connect (``ray://``) fails now and then with "Starting Ray client server
        failed": the head's client proxy forks the per-client server from a multi-threaded gRPC
        process, which sometimes aborts the child (ray-project/ray#63202). A new connect starts a
        new server. Raises the last error after ``attempts`` tries (2 s, 4 s, 8 s apart).
        """
        for attempt in range(1, attempts + 1):
            log.info("connecting to the Ray cluster at %s", self.address)
            try:
                ray.init(address=self.address, **kwargs)
                return
            except Exception as e:  # ConnectionError, RuntimeError, gRPC errors
                with contextlib.suppress(Exception):
                    ray.shutdown()
                if attempt == attempts:
                    raise
                log.warning("connecting to the Ray cluster at %s failed (%s: %s); retrying",
                            self.address, type(e).__name__, str(e).strip().splitlines()[-1:] or "")
                time.sleep(2.0 * 2 ** (attempt - 1))

    def _start_local_head(self) -> str:
        """Start the embedded Ray as a local head node with ``ray start --head`` in a child
        process, and return its address.

        Not ``ray.init()`` in-process: that forks Ray's daemons from this (multi-threaded, gRPC
        serving) process, which can deadlock or crash the child before it execs. ``ray start``
        forks them from a fresh single-threaded process instead. Every port is chosen free, so
        several services (or developers) can each run their own head on one machine. The head
        lives under ``temp_dir``; :meth:`shutdown` ends exactly its processes.
        """
        import subprocess
        import sys
        import tempfile

        temp_dir = self.temp_dir or tempfile.mkdtemp(prefix="smray-")
        self.temp_dir = temp_dir
        ended = end_stale_ray_processes(temp_dir)
        if ended:
            log.warning("ended %d Ray processes a previous run of this service left behind", ended)
        port = _free_port()
        cmd = [
            sys.executable, "-c", "import sys; from ray.scripts.scripts import main; sys.exit(main())",
            "start", "--head", f"--port={port}", f"--temp-dir={temp_dir}", "--include-dashboard=false",
            "--disable-usage-stats", f"--ray-client-server-port={_free_port()}",
            f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
            f"--runtime-env-agent-port={_free_port()}", f"--metrics-export-port={_free_port()}",
            f"--node-manager-port={_free_port()}", f"--object-manager-port={_free_port()}",
        ]
        if self.num_cpus:
            cmd.append(f"--num-cpus={self.num_cpus}")
        log.info("starting an embedded Ray head (%s CPUs) under %s", self.num_cpus or "all", temp_dir)
        # Token authentication with a token of our own: Ray's default token file
        # (~/.ray/auth_token) is shared by every cluster of this user on the machine.
        import secrets

        token = secrets.token_hex(32)
        os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token})
        os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
        try:  # this process caches Ray's config and token: make it see the new ones
            from ray._private.authentication.authentication_token_setup import _enable_token_auth
            from ray._raylet import AuthenticationTokenLoader

            _enable_token_auth()
            AuthenticationTokenLoader.instance().reset_cache()
        except (ImportError, AttributeError):  # pragma: no cover - other ray versions
            pass
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        env.pop("RAY_ADDRESS", None)
        last = ""
        for _attempt in range(3):
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
            if out.returncode == 0:
                return f"127.0.0.1:{port}"
            last = (out.stdout + out.stderr)[-2000:]
            log.warning("ray start failed (rc %s); retrying: %s", out.returncode, last[-300:])
            end_stale_ray_processes(temp_dir)
            port = _free_port()
            cmd[cmd.index(next(c for c in cmd if c.startswith("--port=")))] = f"--port={port}"
        raise RuntimeError(f"could not start the embedded Ray head: {last}")

    def resources(self) -> ClusterResources:
        """Totals and free resources of the cluster (memory of the largest node)."""
        import ray

        self.ensure()
        total = ray.cluster_resources()
        avail = ray.available_resources()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        node_mem = max((n["Resources"].get("memory", 0) for n in nodes), default=total.get("memory", 0))
        return ClusterResources(
            total_cpus=total.get("CPU", 0.0),
            available_cpus=avail.get("CPU", 0.0),
            total_gpus=total.get("GPU", 0.0),
            available_gpus=avail.get("GPU", 0.0),
            node_memory_bytes=int(node_mem),
            node_available_memory_bytes=int(min(node_mem, avail.get("memory", node_mem))),
            num_nodes=max(1, len(nodes)),
        )

    def shutdown(self) -> None:
        """Disconnect; an embedded head is stopped (its processes, found by its temp dir)."""
        import ray

        with self._lock:
            if self._connected and ray.is_initialized():
                ray.shutdown()
            self._connected = False
            if self._started_here and self.temp_dir:
                end_stale_ray_processes(self.temp_dir, timeout=10.0)
                self._started_here = False


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def default_temp_dir(state_dir: str | Path) -> str:
    """A short per-service Ray temp directory: ``<tmp>/smray-<hash of the state dir>``."""
    import hashlib
    import tempfile

    h = hashlib.sha1(str(Path(state_dir).absolute()).encode()).hexdigest()[:10]
    return os.path.join(tempfile.gettempdir(), f"smray-{h}")


def ray_processes_using(temp_dir: str) -> list[int]:
    """PIDs of this user's processes holding files open under ``temp_dir`` (Ray's session logs
    and sockets), i.e. the processes of the embedded Ray that uses that directory."""
    root = os.path.realpath(temp_dir) + os.sep
    me = os.getpid()
    uid = os.getuid()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            for fd in os.listdir(f"/proc/{entry}/fd"):
                try:
                    target = os.readlink(f"/proc/{entry}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith(root):
                    pids.append(int(entry))
                    break
        except OSError:
            continue
    return pids


def end_stale_ray_processes(temp_dir: str, timeout: float = 5.0) -> int:
    """End (SIGTERM, then SIGKILL) the processes of an embedded Ray under ``temp_dir`` that a
    killed service left behind. Returns how many there were."""
    import signal

    if not os.path.isdir(temp_dir) or not os.path.isdir("/proc"):
        return 0
    pids = ray_processes_using(temp_dir)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except OSError:
                break
            time.sleep(0.1)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    return len(pids)
