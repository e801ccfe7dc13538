"""Running jobs as Ray Train ``TorchTrainer`` runs, and stopping them.

* :class:`RayRuntime` connects the service to Ray: an existing cluster when ``RAY_ADDRESS`` or
  the service's ``ray_address`` setting names one, else an embedded local Ray started in the
  service process (``ray_num_cpus`` CPUs). The rest of the code path is the same either way.
* :func:`launch` starts one run: an event sink actor (workers push events to it), and a
  driver actor that calls ``TorchTrainer.fit()`` with the job's ``ScalingConfig`` (workers,
  CPUs/GPUs/memory per worker as Ray resource requests, the placement strategy of their
  placement group), ``RunConfig(storage_path, name=<job id>)``, ``FailureConfig(max_failures)``
  (automatic restart from the last checkpoint when a worker fails) and
  ``CheckpointConfig(num_to_keep=K)``. Both actors (and Ray Train's controller, which follows
  the driver) live on the head node, so losing a worker node never takes the run's control
  down with it.
* Ray queues a run whose workers do not fit: its placement group stays pending until nodes
  with room join or other work ends. :meth:`LaunchedRun.waiting_reason` says why, from the
  per-node free resources (:func:`waiting_reason`).
* :meth:`LaunchedRun.cancel` aborts the Ray Train controller (which removes the placement
  group) and kills the worker actors at once, so the CPUs are free again within seconds.

The driver actor lives as long as the service's Ray job: if the service dies, Ray tears the
run down too, and the job is resumed on request from its last checkpoint.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swiftmesh.jobkit.kinds import ClusterResources

log = logging.getLogger("swiftmesh.jobkit.launcher")

RAY_NAMESPACE = "swiftmesh"

# Ray placement group strategies a job may ask for (Ray Train ``ScalingConfig.placement_strategy``):
# PACK (default: as few nodes as possible, spreading when it must), SPREAD (as many nodes as
# possible), STRICT_PACK (all workers on one node), STRICT_SPREAD (every worker on its own node).
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
DEFAULT_PLACEMENT_STRATEGY = "PACK"
# Job label choosing the placement strategy of its workers (CreateJob ``labels``).
PLACEMENT_LABEL = "swiftmesh.io/placement-strategy"
# Ray's resource that only the head node has (a tiny amount of it pins an actor there).
HEAD_NODE_RESOURCE = "node:__internal_head__"


def placement_strategy(value: str | None, field: str = f"labels[{PLACEMENT_LABEL}]") -> str:
    """Normalise a placement strategy ("strict-spread" -> "STRICT_SPREAD"; empty -> "PACK").

    Raises InvalidArgument naming ``field`` for anything but one of ``PLACEMENT_STRATEGIES``.
    """
    from swiftmesh.runtime.errors import InvalidArgument

    v = (value or "").strip().upper().replace("-", "_")
    if not v:
        return DEFAULT_PLACEMENT_STRATEGY
    if v not in PLACEMENT_STRATEGIES:
        raise InvalidArgument(
            f"unknown placement strategy {value!r}; one of {', '.join(PLACEMENT_STRATEGIES)}",
            field_violations=[(field, f"got {value!r}; one of {', '.join(PLACEMENT_STRATEGIES)}")],
            reason="BAD_PLACEMENT_STRATEGY",
        )
    return v


def worker_bundle(cpus: float, gpus: float = 0.0, memory_bytes: int = 0) -> dict[str, float]:
    """The Ray resource request of one worker: ``{"CPU": cpus, "GPU": gpus, "memory": bytes}``
    (GPU and memory only when > 0). Raises InvalidArgument for negative amounts."""
    from swiftmesh.runtime.errors import InvalidArgument

    for name, v in (("cpus_per_worker", cpus), ("gpus_per_worker", gpus), ("memory_bytes_per_worker", memory_bytes)):
        if v < 0:
            raise InvalidArgument(f"{name} must be >= 0, got {v}",
                                  field_violations=[(f"spec.distribution.{name}", f"got {v}")])
    bundle: dict[str, float] = {"CPU": float(cpus)}
    if gpus:
        bundle["GPU"] = float(gpus)
    if memory_bytes:
        bundle["memory"] = float(memory_bytes)
    return bundle


def _fits(free: dict[str, float], bundle: dict[str, float]) -> int:
    """How many workers of ``bundle`` fit into ``free`` (one node's resources)."""
    n = None
    for r, amount in bundle.items():
        if amount <= 0:
            continue
        k = int(free.get(r, 0.0) / amount + 1e-9)
        n = k if n is None else min(n, k)
    return 1 << 30 if n is None else n


def placeable(bundle: dict[str, float], strategy: str, per_node: dict[str, dict[str, float]]) -> int:
    """How many workers of ``bundle`` Ray could place on nodes with these resources under
    ``strategy`` (STRICT_SPREAD: one per node; STRICT_PACK: on one node; else anywhere)."""
    fits = [_fits(res, bundle) for res in per_node.values()]
    if strategy == "STRICT_SPREAD":
        return sum(1 for k in fits if k >= 1)
    if strategy == "STRICT_PACK":
        return max(fits, default=0)
    return sum(fits)


def _amount(resource: str, amount: float) -> str:
    if resource == "memory":
        return f"{amount / 2**30:.1f} GiB memory"
    if resource in ("CPU", "GPU"):
        return f"{amount:g} {resource}{'' if amount == 1 else 's'}"
    return f"{amount:g} {resource}"


def waiting_reason(
    num_workers: int,
    bundle: dict[str, float],
    strategy: str,
    free_per_node: dict[str, dict[str, float]],
    total_per_node: dict[str, dict[str, float]] | None = None,
) -> str | None:
    """Why Ray cannot place a job's workers now, or None when it can.

    Args:
        num_workers: workers of the job (>= 1).
        bundle: one worker's resource request (:func:`worker_bundle`).
        strategy: one of ``PLACEMENT_STRATEGIES``.
        free_per_node: free resources of each live node (node id -> {resource: amount}).
        total_per_node: total resources of each live node (default: ``free_per_node``); says
            whether the job could fit even on an idle cluster.

    E.g. "waiting for 2 workers x 1 CPU, each on its own node (STRICT_SPREAD); the cluster has
    1 CPU free; 1 of 1 nodes can take a worker now".
    """
    if placeable(bundle, strategy, free_per_node) >= num_workers:
        return None
    total_per_node = free_per_node if total_per_node is None else total_per_node
    asked = {r: a for r, a in bundle.items() if a > 0}
    need = ", ".join(_amount(r, a) for r, a in asked.items()) or "no resources"
    how = {"STRICT_SPREAD": f", each on its own node ({strategy})", "STRICT_PACK": f", all on one node ({strategy})"}.get(
        strategy, "")
    free = ", ".join(_amount(r, sum(res.get(r, 0.0) for res in free_per_node.values())) for r in asked)
    nodes_ok = sum(1 for res in free_per_node.values() if _fits(res, bundle) >= 1)
    n = len(free_per_node)
    msg = (f"waiting for {num_workers} worker{'' if num_workers == 1 else 's'} x {need}{how}; "
           f"the cluster has {free} free; {nodes_ok} of {n} node{'' if n == 1 else 's'} can take a worker now")
    if placeable(bundle, strategy, total_per_node) < num_workers:
        m = len(total_per_node)
        msg += (f" (the cluster's {m} node{'' if m == 1 else 's'} cannot hold the job even when idle: "
                "it starts once nodes with room join)")
    return msg


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
        return self.address is None

    def ensure(self) -> None:
        """Connect (or start the embedded Ray) once; later calls return at once."""
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
            kwargs: dict[str, Any] = dict(
                namespace=RAY_NAMESPACE,
                log_to_driver=False,
                runtime_env={"env_vars": env},
            )
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
            except Exception as e:  # noqa: BLE001  (ConnectionError, RuntimeError, gRPC errors)
                try:
                    ray.shutdown()
                except Exception:  # noqa: BLE001
                    pass
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
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600,
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


# Actors ----------------------------------------------------------------------------------
def _actor_classes():
    import ray

    @ray.remote(num_cpus=0, max_restarts=0)
    class EventSink:
        """Buffers the events workers push; the service drains it. One per run."""

        def __init__(self, attempt_offset: int = 0) -> None:
            self.events: list[dict] = []
            self.attempts: dict[int, int] = {}
            self.offset = attempt_offset
            self.workers: dict[int, Any] = {}
            self.checkpoint: dict | None = None  # the last one announced: {"step", "path"}

        def push(self, events: list[dict]) -> None:
            self.events.extend(events)
            for e in events:
                if e.get("type") == "checkpoint" and (
                    self.checkpoint is None or int(e.get("step", 0)) >= self.checkpoint["step"]
                ):
                    self.checkpoint = {"step": int(e.get("step", 0)), "path": str(e.get("path", ""))}

        def last_checkpoint(self) -> dict | None:
            """The last checkpoint a worker announced in this run (complete on every rank)."""
            return self.checkpoint

        def drain(self) -> list[dict]:
            out, self.events = self.events, []
            return out

        def next_attempt(self, rank: int) -> int:
            self.attempts[rank] = self.attempts.get(rank, 0) + 1
            return self.offset + self.attempts[rank]

        def register_worker(self, rank: int, handle) -> None:
            self.workers[rank] = handle

        def worker_handles(self) -> list:
            return list(self.workers.values())

    @ray.remote(num_cpus=0, max_concurrency=4, max_restarts=0)
    class JobDriver:
        """Runs ``TorchTrainer.fit()`` for one job and can abort it."""

        def __init__(self) -> None:
            self.controller = None
            self.aborted = False

        def run(self, train_config: dict, scaling: dict, run: dict) -> dict:
            import ray.train
            from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

            from swiftmesh.jobkit.worker import train_loop

            driver = self
            trainer_cls = _abortable_trainer(lambda c: setattr(driver, "controller", c))
            trainer = trainer_cls(
                train_loop,
                train_loop_config=train_config,
                scaling_config=ScalingConfig(**scaling),
                run_config=RunConfig(
                    name=run["name"],
                    storage_path=run["storage_path"],
                    failure_config=FailureConfig(max_failures=run["max_failures"]),
                    checkpoint_config=CheckpointConfig(num_to_keep=run["num_to_keep"]),
                ),
            )
            try:
                result = trainer.fit()
            except BaseException as e:  # noqa: BLE001
                if self.aborted:
                    return {"status": "aborted"}
                return {"status": "error", "error": _error_text(e), "type": type(e).__name__}
            if self.aborted:
                return {"status": "aborted"}
            ckpt = result.checkpoint.path if result.checkpoint is not None else ""
            return {"status": "ok", "checkpoint": ckpt}

        def _placement_groups(self) -> list:
            """(id, state name) of the live placement groups this run's Ray Train controller made."""
            from ray._private import state as ray_state
            from ray.core.generated import gcs_pb2

            if self.controller is None:
                return []
            me = self.controller._actor_id.binary()
            states = gcs_pb2.PlacementGroupTableData.PlacementGroupState
            out = []
            for raw in ray_state.state._connect_and_get_accessor().get_placement_group_table():
                pg = gcs_pb2.PlacementGroupTableData.FromString(raw)
                if pg.creator_actor_id == me and pg.state != states.REMOVED:
                    out.append((pg.placement_group_id, states.Name(pg.state)))
            return out

        def waiting_reason(self, num_workers: int, bundle: dict, strategy: str) -> str | None:
            """Why the run's workers wait for room (None when they do not): only while the run's
            placement group is pending in Ray, from the per-node free resources (computed here,
            inside the cluster, so it works through Ray Client too)."""
            from ray._private import state as ray_state

            if not any(st in ("PENDING", "RESCHEDULING") for _, st in self._placement_groups()):
                return None
            alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
            free = {k: v for k, v in ray_state.available_resources_per_node().items() if k in alive}
            total = {k: v for k, v in ray_state.total_resources_per_node().items() if k in alive}
            for k in total:
                free.setdefault(k, {})
            return waiting_reason(num_workers, bundle, strategy, free, total)

        def abort(self, worker_handles: list) -> str:
            self.aborted = True
            refs = []
            if self.controller is not None:
                refs.append(self.controller.abort.remote())
            for h in worker_handles:
                try:
                    ray.kill(h, no_restart=True)
                except Exception:  # noqa: BLE001
                    pass
            if refs:
                try:
                    ray.get(refs, timeout=5)
                except ray.exceptions.GetTimeoutError:
                    # The controller does not answer while it blocks waiting for its placement
                    # group (a run Ray has not placed yet): end it, and its placement group below.
                    try:
                        ray.kill(self.controller, no_restart=True)
                    except Exception:  # noqa: BLE001
                        pass
                except Exception:  # noqa: BLE001  (the controller exits while answering)
                    pass
            # A placement group lives as long as the service's Ray job, not its creator: one left
            # pending would take the next node with room and hold it for nobody.
            try:
                from ray.util.placement_group import PlacementGroup

                for pg_id, _ in self._placement_groups():
                    ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID(pg_id)))
            except Exception:  # noqa: BLE001
                pass
            return "aborted"

    return EventSink, JobDriver


_ACTORS = None


def actors():
    global _ACTORS
    if _ACTORS is None:
        _ACTORS = _actor_classes()
    return _ACTORS


def _error_text(e: BaseException) -> str:
    """The most useful message of a Ray Train failure (the worker's own exception)."""
    text = str(e)
    # WorkerGroupError carries per-worker exceptions.
    errs = getattr(e, "worker_failures", None) or getattr(e, "_worker_failures", None)
    if isinstance(errs, dict) and errs:
        first = next(iter(errs.values()))
        text = f"{type(first).__name__}: {first}"
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return "\n".join(lines[-12:])[:4000]


def _abortable_trainer(on_controller):
    """A TorchTrainer that hands its controller actor to ``on_controller`` so the run can be aborted.

    Mirrors ``DataParallelTrainer._initialize_and_run_controller`` of ray 2.60 (the controller
    handle is otherwise not exposed); falls back to the stock method when its internals move.
    """
    import ray
    from ray.train.torch import TorchTrainer

    class AbortableTorchTrainer(TorchTrainer):
        def _initialize_and_run_controller(self, **controller_init_kwargs):
            try:
                from ray.train.v2.api.data_parallel_trainer import (
                    DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE,
                    RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR,
                    TrainController,
                    get_env_vars_to_propagate,
                )
            except ImportError:  # pragma: no cover - other ray versions
                return super()._initialize_and_run_controller(**controller_init_kwargs)
            env_vars = get_env_vars_to_propagate()
            env_vars.setdefault(RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR, DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE)
            controller_cls = ray.remote(
                num_cpus=0,
                label_selector={ray._raylet.RAY_NODE_ID_KEY: ray.get_runtime_context().get_node_id()},
                runtime_env={"env_vars": env_vars},
            )(TrainController)
            controller = controller_cls.remote(**controller_init_kwargs)
            on_controller(controller)
            ray.get(controller.run.remote())
            return ray.get(controller.get_result.remote())

    return AbortableTorchTrainer


@dataclass
class RunRequest:
    """One launch of a job (a first start or a resume)."""

    job: str
    kind: Any
    plan_config: dict
    data: dict
    labels: dict
    settings: Any
    models: Any
    num_workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    memory_bytes_per_worker: int
    storage_path: str
    max_failures: int
    num_to_keep: int
    resume_from: str = ""
    attempt_offset: int = 0
    placement_strategy: str = DEFAULT_PLACEMENT_STRATEGY
    service: str = "jobs"
    trace_context: dict[str, str] = field(default_factory=dict)

    @property
    def bundle(self) -> dict[str, float]:
        """One worker's Ray resource request."""
        return worker_bundle(self.cpus_per_worker, self.gpus_per_worker, self.memory_bytes_per_worker)


class LaunchedRun:
    """A run in flight: drain its events, wait for its end, cancel it."""

    def __init__(self, sink, driver, ref, req: RunRequest | None = None) -> None:
        self.sink = sink
        self.driver = driver
        self.ref = ref
        self.req = req
        self.cancel_requested = False

    def waiting_reason(self, timeout: float = 10.0) -> str | None:
        """Why Ray has not placed this run's workers yet (e.g. "waiting for 2 workers x 1 CPU,
        each on its own node (STRICT_SPREAD); the cluster has 1 CPU free; ..."), or None when
        they are placed, starting or running (or the driver did not answer within ``timeout`` s)."""
        import ray

        if self.req is None:
            return None
        try:
            return ray.get(
                self.driver.waiting_reason.remote(self.req.num_workers, self.req.bundle, self.req.placement_strategy),
                timeout=timeout,
            )
        except Exception:  # noqa: BLE001  (a status probe never breaks the run)
            log.debug("waiting_reason failed", exc_info=True)
            return None

    def drain(self) -> list[dict]:
        import ray

        try:
            return ray.get(self.sink.drain.remote(), timeout=30)
        except Exception:  # noqa: BLE001
            return []

    def wait(self, timeout: float) -> dict | None:
        """The driver's result dict once the run ended, else None after ``timeout`` s."""
        import ray

        ready, _ = ray.wait([self.ref], timeout=timeout)
        if not ready:
            return None
        try:
            return ray.get(self.ref)
        except Exception as e:  # noqa: BLE001  (the driver actor died)
            if self.cancel_requested:
                return {"status": "aborted"}
            return {"status": "error", "error": _error_text(e), "type": type(e).__name__}

    def cancel(self) -> None:
        """Abort the controller and kill the workers; returns once Ray has been told."""
        import ray

        self.cancel_requested = True
        try:
            handles = ray.get(self.sink.worker_handles.remote(), timeout=5)
        except Exception:  # noqa: BLE001
            handles = []
        try:
            ray.get(self.driver.abort.remote(handles), timeout=25)
        except Exception:  # noqa: BLE001
            pass

    def close(self) -> None:
        import ray

        for a in (self.driver, self.sink):
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001
                pass


def launch(runtime: RayRuntime, req: RunRequest) -> LaunchedRun:
    """Start a run on Ray (returns at once; the workers start when resources allow)."""
    import ray

    runtime.ensure()
    EventSink, JobDriver = actors()
    # On the head node: a worker node that goes away must not take the run's control with it.
    on_head = {"resources": {HEAD_NODE_RESOURCE: 0.001}}
    sink = EventSink.options(**on_head).remote(req.attempt_offset)
    driver = JobDriver.options(**on_head).remote()
    Path(req.storage_path).mkdir(parents=True, exist_ok=True)
    train_config = {
        "job": req.job,
        "kind": req.kind,
        "plan_config": req.plan_config,
        "data": ray.put(req.data),
        "labels": req.labels,
        "settings": req.settings,
        "models": req.models,
        "sink": sink,
        "storage_path": req.storage_path,
        "run_name": req.job.removeprefix("jobs/"),
        "resume_from": req.resume_from,
        "attempt_offset": req.attempt_offset,
        "service": req.service,
        "trace_context": dict(req.trace_context),
    }
    scaling = {
        "num_workers": req.num_workers,
        "use_gpu": bool(req.gpus_per_worker),
        "resources_per_worker": req.bundle,
        "placement_strategy": placement_strategy(req.placement_strategy),
    }
    run = {
        "name": req.job.removeprefix("jobs/"),
        "storage_path": req.storage_path,
        "max_failures": req.max_failures,
        "num_to_keep": max(1, req.num_to_keep),
    }
    ref = driver.run.remote(train_config, scaling, run)
    return LaunchedRun(sink, driver, ref, req)


def wait_for_free_cpus(runtime: RayRuntime, cpus: float, timeout: float) -> bool:
    """True once at least ``cpus`` CPUs are free in the cluster (polls every 0.2 s)."""
    import ray

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ray.available_resources().get("CPU", 0.0) >= cpus:
            return True
        time.sleep(0.2)
    return False
