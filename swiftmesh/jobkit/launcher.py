"""Starting a job as a Ray Train ``TorchTrainer`` run.

:func:`launch` starts one run: an event sink actor (workers push events to it), and a driver
actor that calls ``TorchTrainer.fit()`` with the job's ``ScalingConfig`` (workers,
CPUs/GPUs/memory per worker as Ray resource requests, the placement strategy of their
placement group), ``RunConfig(storage_path, name=<job id>)``, ``FailureConfig(max_failures)``
(automatic restart from the last checkpoint when a worker fails) and
``CheckpointConfig(num_to_keep=K)``. Both actors (and Ray Train's controller, which follows the
driver) live on the head node, so losing a worker node never takes the run's control down with
it. The driver actor lives as long as the service's Ray job: if the service dies, Ray tears the
run down too, and the restarted service resumes the job from its last checkpoint. The driver is
named after the job (:func:`driver_name`), so a driver that outlived its service (a Ray job not
torn down yet) is ended by the next launch of the job (:func:`end_stale_driver`).

Around it: :mod:`swiftmesh.jobkit.ray_runtime` (the connection to Ray: a cluster, or an
embedded head), :mod:`swiftmesh.jobkit.placement` (placement strategies, worker resource
requests, why a run waits) and :mod:`swiftmesh.jobkit.run_monitor` (:class:`LaunchedRun`:
following the run, cancelling it).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swiftmesh.jobkit.placement import (
    DEFAULT_PLACEMENT_STRATEGY,
    HEAD_NODE_RESOURCE,
    placement_strategy,
    waiting_reason,
    worker_bundle,
)
from swiftmesh.jobkit.ray_runtime import RayRuntime
from swiftmesh.jobkit.run_monitor import LaunchedRun, error_text


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
            """Buffer a worker's events (dicts with a ``type``); remember the latest checkpoint."""
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
            """The buffered events, oldest first; the buffer is emptied."""
            out, self.events = self.events, []
            return out

        def next_attempt(self, rank: int) -> int:
            """The attempt number of a worker of ``rank`` starting now (1-based, after the
            ``attempt_offset`` of earlier launches): Ray Train restarts count up."""
            self.attempts[rank] = self.attempts.get(rank, 0) + 1
            return self.offset + self.attempts[rank]

        def register_worker(self, rank: int, handle) -> None:
            """Remember the actor handle of the worker of ``rank`` (for cancelling)."""
            self.workers[rank] = handle

        def worker_handles(self) -> list:
            """The actor handles of the workers registered so far."""
            return list(self.workers.values())

    @ray.remote(num_cpus=0, max_concurrency=4, max_restarts=0)
    class JobDriver:
        """Runs ``TorchTrainer.fit()`` for one job and can abort it."""

        def __init__(self) -> None:
            self.controller = None
            self.aborted = False

        def run(self, train_config: dict, scaling: dict, run: dict) -> dict:
            """``TorchTrainer(train_loop).fit()``; ``scaling`` holds ``ScalingConfig``'s keyword
            arguments, ``run`` the run name, storage path, max failures and checkpoints to keep.

            Returns ``{"status": "ok", "checkpoint": path}``, ``{"status": "aborted"}``, or
            ``{"status": "error", "error": text, "type": exception name}`` (never raises).
            """
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
                return {"status": "error", "error": error_text(e), "type": type(e).__name__}
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
            """Abort the controller, kill ``worker_handles`` and remove the run's placement
            groups (every step best effort); returns "aborted"."""
            self.aborted = True
            refs = []
            if self.controller is not None:
                refs.append(self.controller.abort.remote())
            for h in worker_handles:
                with contextlib.suppress(Exception):
                    ray.kill(h, no_restart=True)
            if refs:
                with contextlib.suppress(Exception):  # the controller exits while answering
                    try:
                        ray.get(refs, timeout=5)
                    except ray.exceptions.GetTimeoutError:
                        # The controller does not answer while it blocks waiting for its placement
                        # group (a run Ray has not placed yet): end it, and its placement group below.
                        ray.kill(self.controller, no_restart=True)
            # A placement group lives as long as the service's Ray job, not its creator: one left
            # pending would take the next node with room and hold it for nobody.
            with contextlib.suppress(Exception):
                from ray.util.placement_group import PlacementGroup

                for pg_id, _ in self._placement_groups():
                    ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID(pg_id)))
            return "aborted"

    return EventSink, JobDriver


_ACTORS = None


def actors():
    """The ``(EventSink, JobDriver)`` Ray actor classes (defined once, on first use: importing
    this module does not import Ray)."""
    global _ACTORS
    if _ACTORS is None:
        _ACTORS = _actor_classes()
    return _ACTORS


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


def driver_name(service: str, job: str) -> str:
    """The Ray actor name of a job's driver (in the service's namespace): ``"<service>/jobs/<id>"``."""
    return f"{service}/{job}"


def end_stale_driver(name: str, timeout: float = 30.0) -> bool:
    """End the driver actor ``name`` if one is alive: an earlier run of the job whose service died
    (kill -9) while Ray had not torn its Ray job down yet (a Ray Client driver is kept for a
    reconnect grace period, a dead driver is noticed late on a loaded head). Its run is aborted
    (controller, workers, placement groups: :meth:`JobDriver.abort`) and the actor killed, so it
    neither holds the resources the new run needs nor writes checkpoints next to it. Waits up to
    ``timeout`` s for the name to be free. Returns whether there was one."""
    import time

    import ray

    try:
        stale = ray.get_actor(name)
    except ValueError:
        return False
    with contextlib.suppress(Exception):
        ray.get(stale.abort.remote([]), timeout=timeout)
    with contextlib.suppress(Exception):
        ray.kill(stale, no_restart=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ray.get_actor(name)
        except ValueError:
            break
        time.sleep(0.2)
    return True


@dataclass
class RunRequest:
    """One launch of a job (a first start or a resume).

    ``kind`` is the job kind (its ``train`` runs in every worker), ``plan_config``/``data`` what
    its ``prepare`` produced, ``settings`` the service settings the workers need, ``models`` the
    model source they read from; resources are per worker (``memory_bytes_per_worker`` in bytes,
    0: no request); ``storage_path`` is Ray Train's; ``resume_from`` a checkpoint path ("" to
    start fresh); ``attempt_offset`` the attempts of earlier launches.
    """

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


def launch(runtime: RayRuntime, req: RunRequest) -> LaunchedRun:
    """Start a run on Ray (returns at once; the workers start when resources allow).

    Connects ``runtime`` first (see :meth:`RayRuntime.ensure` for what that raises) and
    creates ``req.storage_path``.

    Raises:
        InvalidArgument: a bad placement strategy or negative resources in ``req``.
    """
    import ray

    runtime.ensure()
    EventSink, JobDriver = actors()
    # On the head node: a worker node that goes away must not take the run's control with it.
    on_head = {"resources": {HEAD_NODE_RESOURCE: 0.001}}
    sink = EventSink.options(**on_head).remote(req.attempt_offset)
    # Named after the job: a driver of an earlier run that outlived its service is found and ended.
    name = driver_name(req.service, req.job)
    end_stale_driver(name)
    try:
        driver = JobDriver.options(name=name, **on_head).remote()
    except ValueError:  # taken again meanwhile
        end_stale_driver(name)
        driver = JobDriver.options(name=name, **on_head).remote()
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
