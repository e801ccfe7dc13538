"""Worker side of a job: what :meth:`JobKind.train` sees inside each Ray Train worker.

:class:`WorkerContext` gives the kind its rank, config and data, the model source, a local
scratch directory, the checkpoint to resume from, and the reporting calls
(``report_metrics``, ``log``, ``save_checkpoint``). :meth:`WorkerContext.hf_callback` is a
``transformers.TrainerCallback`` that does all the reporting for an HF / TRL trainer:
metrics every logging step (loss, learning rate, grad norm, tokens/s, ETA) and a Ray Train
checkpoint every time the trainer saves one.

Events travel to the service through a small Ray actor (the job's event sink), so workers
on any node of the cluster report the same way.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swiftmesh.runtime.durable import copy_tree_atomic, fsync_tree

log = logging.getLogger("swiftmesh.jobkit.worker")

# Label of a job that makes one worker exit abruptly at this optimizer step on the first
# attempt: a fault-injection hook for tests of the automatic resume.
FAIL_AT_STEP_LABEL = "swiftmesh.test/fail-at-step"


class NonRetryableError(Exception):
    """Raise from ``JobKind.train`` for an error a restart cannot fix: the job fails at once
    instead of being restarted by Ray's failure handling. (Errors raised before training
    starts, i.e. before the first metrics report, checkpoint or HF ``on_train_begin``, and
    every SwiftMeshError, count as non-retryable too.)"""


@dataclass
class WorkerContext:
    """Everything a kind's ``train`` gets in a Ray Train worker.

    Attributes:
        job: "jobs/{id}".
        rank / world_size / local_rank: the worker's place in the group.
        config: the plan's JSON config.
        data: the plan's rows by split ("train", "eval").
        settings: the service's Settings (to reach the hub).
        models: the model source (materialize the base model, upload artifacts).
        work_dir: local scratch directory on the worker's node (an HF output_dir).
        resume_from: local copy of the checkpoint to resume from (None on a fresh start).
        resume_step: optimizer step of that checkpoint (0 on a fresh start).
        attempt: 1-based count of (re)starts of this run.
        labels: the job's labels.
    """

    job: str
    rank: int
    world_size: int
    local_rank: int
    config: dict[str, Any]
    data: dict[str, list[dict[str, Any]]]
    settings: Any
    models: Any
    work_dir: Path
    resume_from: Path | None = None
    resume_step: int = 0
    attempt: int = 1
    labels: dict[str, str] = field(default_factory=dict)
    _sink: Any = None
    _storage: str = ""
    _run_name: str = ""
    _in_ray: bool = False
    _started: bool = False

    @property
    def is_main(self) -> bool:
        """True on rank 0."""
        return self.rank == 0

    # Reporting ---------------------------------------------------------------------------
    def _push(self, event: dict[str, Any]) -> None:
        if self._sink is None:
            return
        event.setdefault("time", time.time())
        event.setdefault("source", f"worker-{self.rank}")
        try:
            self._sink.push.remote([event])
        except Exception:  # noqa: BLE001  (reporting never breaks training)
            log.debug("event push failed", exc_info=True)

    def report_metrics(
        self,
        step: int,
        metrics: dict[str, float],
        *,
        epoch: float = 0.0,
        total_steps: int = 0,
        tokens_per_second: float | None = None,
        eta_seconds: float | None = None,
    ) -> None:
        """Report scalar metrics at an optimizer step (rank 0 only; other ranks are ignored).

        ``metrics`` keys are TensorBoard tags ("train/loss", "rewards/margins"); values floats.
        """
        self._started = True
        if not self.is_main:
            return
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and v == v}
        self._push(
            {
                "type": "metrics",
                "step": int(step),
                "epoch": float(epoch),
                "total_steps": int(total_steps),
                "metrics": clean,
                "tokens_per_second": tokens_per_second,
                "eta_seconds": eta_seconds,
            }
        )

    def log(self, message: str, level: str = "INFO") -> None:
        """A log line for WatchJob and ``swiftmesh jobs logs`` (every rank may log)."""
        self._push({"type": "log", "level": level.upper(), "message": str(message)})

    def save_checkpoint(self, local_dir: str | Path | None, step: int) -> None:
        """Persist a checkpoint to the job's storage through Ray Train (``ray.train.report``).

        Every worker must call this at the same steps (it is a barrier); each passes its own
        local directory (or None), and Ray merges them into ``<storage>/<job>/checkpoint-<step>``.
        The job lists the checkpoint only once it is complete: every rank's part stored, and the
        directory fsynced (:func:`swiftmesh.runtime.durable.fsync_tree`) by rank 0.
        """
        self._started = True
        path = os.path.join(self._storage, self._run_name, f"checkpoint-{int(step)}")
        if not self._in_ray:
            # Outside Ray Train (direct runs, tests): copied into the storage directory, if any,
            # under a temporary name that becomes the checkpoint's once the copy is on disk.
            if self._storage and local_dir is not None and Path(local_dir).is_dir():
                copy_tree_atomic(local_dir, path)
            if self.is_main and self._storage:
                self._push({"type": "checkpoint", "step": int(step), "path": path})
            return
        import ray.train

        ckpt = None
        if local_dir is not None and Path(local_dir).is_dir() and any(Path(local_dir).iterdir()):
            ckpt = ray.train.Checkpoint.from_directory(str(local_dir))
        ray.train.report(
            {"step": int(step)},
            checkpoint=ckpt,
            checkpoint_dir_name=f"checkpoint-{int(step)}",
            delete_local_checkpoint_after_upload=False,
        )
        # ray.train.report returns once this rank's part is uploaded; announce the checkpoint
        # only once every rank's is, and it is on disk (a restart may start from it, see
        # _resolve_checkpoint; the job records it as its commit point).
        _barrier()
        if self.is_main:
            if Path(path).is_dir():
                fsync_tree(path)
            self._push({"type": "checkpoint", "step": int(step), "path": path})

    def hf_callback(self):
        """A ``transformers.TrainerCallback`` reporting metrics and checkpoints of an HF trainer.

        Use with ``TrainingArguments(include_num_input_tokens_seen="non_padding")`` for
        tokens/s. Checkpoints: ``save_steps`` of the trainer (each save becomes a Ray Train
        checkpoint; keep ``save_total_limit=1`` locally, the job keeps the last K).
        """
        return make_hf_callback(self)


def make_hf_callback(ctx: WorkerContext):
    """The HF ``TrainerCallback`` reporting a worker's metrics and checkpoints to the job (see :class:`JobkitCallback`)."""
    from transformers import TrainerCallback

    fail_at = int(ctx.labels.get(FAIL_AT_STEP_LABEL, "0") or 0)

    class JobkitCallback(TrainerCallback):
        """Reports HF Trainer logs and saves to the SwiftMesh job (WatchJob, TensorBoard, Ray)."""

        def __init__(self) -> None:
            self._t0 = None
            self._step0 = 0
            self._last_t = None
            self._last_tokens = 0

        def on_train_begin(self, args, state, control, **kwargs):
            ctx._started = True
            self._t0 = self._last_t = time.time()
            self._step0 = state.global_step
            self._last_tokens = getattr(state, "num_input_tokens_seen", 0) or 0
            if ctx.is_main:
                ctx.log(
                    f"training: {state.max_steps} optimizer steps, world size {ctx.world_size}"
                    + (f", resuming at step {state.global_step}" if state.global_step else "")
                )
                ctx.report_metrics(state.global_step, {}, epoch=state.epoch or 0.0, total_steps=state.max_steps)

        def on_step_end(self, args, state, control, **kwargs):
            if fail_at and state.global_step == fail_at and ctx.attempt == 1 and ctx.rank == ctx.world_size - 1:
                ctx.log(f"fault injection: worker {ctx.rank} exits at step {fail_at}", "WARNING")
                time.sleep(0.5)
                os._exit(1)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not ctx.is_main or not logs:
                return
            now = time.time()
            metrics = {}
            summary = "train_runtime" in logs and "train_loss" in logs  # the end-of-training summary
            for k, v in logs.items():
                if not isinstance(v, (int, float)) or isinstance(v, bool) or k == "epoch":
                    continue
                if k.startswith("eval_"):
                    metrics["eval/" + k[5:]] = v
                elif k == "train_loss":
                    metrics["train/mean_loss"] = v
                elif k == "num_input_tokens_seen":
                    metrics["train/tokens_seen"] = v
                elif summary or k in ("train_tokens_per_second", "train_runtime"):
                    metrics["train/" + k.removeprefix("train_")] = v
                else:
                    metrics["train/" + k] = v
            if summary:
                metrics.pop("train/tokens_per_second", None)
            tokens = getattr(state, "num_input_tokens_seen", 0) or 0
            tps = None
            if not summary and self._last_t is not None and now > self._last_t and tokens > self._last_tokens:
                tps = (tokens - self._last_tokens) / (now - self._last_t)
                metrics["train/tokens_per_second"] = tps
                self._last_t, self._last_tokens = now, tokens
            eta = None
            done = state.global_step - self._step0
            if done > 0 and self._t0 is not None and state.max_steps:
                eta = (now - self._t0) / done * max(0, state.max_steps - state.global_step)
            ctx.report_metrics(
                state.global_step,
                metrics,
                epoch=state.epoch or 0.0,
                total_steps=state.max_steps,
                tokens_per_second=tps,
                eta_seconds=eta,
            )

        def on_train_end(self, args, state, control, **kwargs):
            if ctx.is_main:
                ctx.report_metrics(state.global_step, {"system/peak_rss_bytes": peak_rss_bytes()},
                                   epoch=state.epoch or 0.0, total_steps=state.max_steps)

        def on_save(self, args, state, control, **kwargs):
            d = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            ctx.save_checkpoint(d if d.is_dir() else None, state.global_step)

    return JobkitCallback()


def peak_rss_bytes() -> float:
    """Peak resident memory of this process so far, bytes (``getrusage`` maxrss)."""
    import resource

    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


class _SinkLogHandler(logging.Handler):
    """Forwards log records of the training libraries to the job's log (bounded)."""

    def __init__(self, ctx: WorkerContext, limit: int = 500) -> None:
        super().__init__(logging.INFO)
        self.ctx = ctx
        self.left = limit

    def emit(self, record: logging.LogRecord) -> None:
        if self.left <= 0:
            return
        if not record.name.startswith("swiftmesh") and record.levelno < logging.WARNING:
            return
        self.left -= 1
        try:
            self.ctx.log(record.getMessage()[:2000], record.levelname)
        except Exception:  # noqa: BLE001
            pass


def _step_of(name: str) -> int:
    """The step of a "checkpoint-<step>" directory name (0 for other names)."""
    if name.startswith("checkpoint-"):
        try:
            return int(name.split("-", 1)[1])
        except ValueError:
            return 0
    return 0


def _resolve_checkpoint(
    config: dict[str, Any], work_dir: Path, first_attempt: bool, announced: dict[str, Any] | None = None
) -> tuple[Path | None, int]:
    """The checkpoint this attempt starts from, copied to ``work_dir/resume``, and its step.

    On the first attempt of a resumed launch: the one the service named (the job's last). On an
    automatic restart: the newer of Ray's latest and ``announced``, the last checkpoint this run
    announced to the service (complete on every rank: :meth:`WorkerContext.save_checkpoint`
    waits for all of them). Ray registers a checkpoint only when its controller next polls every
    worker (every 2 s), so a node lost right after a save can leave Ray's one behind.
    """
    import ray.train

    candidates: list[tuple[int, Any]] = []  # (step, ray Checkpoint or local dir); first wins ties
    if first_attempt and config.get("resume_from"):
        p = Path(config["resume_from"])
        if p.is_dir():
            candidates.append((_step_of(p.name), p))
    else:
        ckpt = ray.train.get_checkpoint()
        if ckpt is not None and Path(ckpt.path).is_dir():  # one removed as uncommitted is gone
            candidates.append((_step_of(Path(ckpt.path).name), ckpt))
        if announced and announced.get("path") and Path(announced["path"]).is_dir():
            candidates.append((int(announced.get("step", 0)), Path(announced["path"])))
        if not candidates and config.get("resume_from") and Path(config["resume_from"]).is_dir():
            p = Path(config["resume_from"])
            candidates.append((_step_of(p.name), p))
    if not candidates:
        return None, 0
    step, src = max(candidates, key=lambda c: c[0])
    dest = work_dir / "resume"
    shutil.rmtree(dest, ignore_errors=True)
    if isinstance(src, Path):
        shutil.copytree(src, dest)
    else:
        src.to_directory(str(dest))
    return dest, step


def _barrier() -> None:
    """Wait for every rank of the process group (no-op without one)."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


class _ReportingModels:
    """The job's model source as a worker sees it: every call goes to the real source, and the
    first materialization of each model is written to the job's log with how its files got to
    this node (the hub's cache on the same host, or mirrored through the hub's file stream)."""

    def __init__(self, inner: Any, ctx: WorkerContext) -> None:
        self._inner = inner
        self._ctx = ctx
        self._reported: set[str] = set()

    def materialize(self, name: str) -> Path:
        info_fn = getattr(self._inner, "materialize_info", None)
        if info_fn is None:
            return Path(self._inner.materialize(name))
        info = info_fn(name)
        if name not in self._reported:
            self._reported.add(name)
            how = ("mirrored through the hub's file stream" if info.mirrored
                   else "read in place from the hub's cache (same host)")
            self._ctx.log(f"model {name}: {how} at {info.path} (host {info.host})")
        return Path(info.path)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") or attr in ("_inner", "_ctx", "_reported"):
            raise AttributeError(attr)
        return getattr(self._inner, attr)

    def __reduce__(self):  # pickles as the real source
        return (_identity, (self._inner,))


def _identity(x: Any) -> Any:
    return x


def placement_report(ctx: WorkerContext) -> str:
    """One line saying where this worker runs: rank, Ray node id, node IP, host identity, pid."""
    import socket

    import ray

    from swiftmesh.runtime.host import machine_id

    rc = ray.get_runtime_context()
    try:
        ip = ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001
        ip = "?"
    return (f"placement: rank {ctx.rank} of {ctx.world_size} on node {rc.get_node_id()} (ip {ip}, "
            f"hostname {socket.gethostname()}, host {machine_id()}), pid {os.getpid()}, attempt {ctx.attempt}")


def _upload_artifacts(ctx: WorkerContext, artifacts: list, config: dict[str, Any]) -> None:
    """Register the run's artifacts in the hub (rank 0), with lineage (base, parent, job).

    The upload runs in a span ``job.upload_artifacts`` of the CreateJob/ResumeJob call's trace
    (its W3C context travels in ``config["trace_context"]``), so one trace id covers a job's
    upload from the trainer/aligner into the hub's UploadModel.
    """
    from opentelemetry import propagate, trace

    from swiftmesh.runtime.telemetry import flush_tracing, setup_tracing

    setup_tracing(config.get("service") or "jobs")
    parent = propagate.extract(config.get("trace_context") or {})
    tracer = trace.get_tracer("swiftmesh.jobkit")
    try:
        with tracer.start_as_current_span(
            "job.upload_artifacts", context=parent, kind=trace.SpanKind.INTERNAL,
            attributes={"swiftmesh.job": ctx.job, "swiftmesh.artifacts": len(artifacts)},
        ):
            for a in artifacts:
                lineage = {"job": ctx.job}
                if a.base_model:
                    lineage["base_model"] = a.base_model
                if a.parent_model:
                    lineage["parent_model"] = a.parent_model
                ctx.log(f"uploading {a.kind} {a.model_id} to the hub")
                name = ctx.models.upload(
                    a.path, a.model_id, format=a.resolved_format(), lineage=lineage, labels=a.labels, overwrite=True
                )
                ctx._push({"type": "artifact", "model": name, "kind": a.kind})
    finally:
        flush_tracing()


def train_loop(config: dict[str, Any]) -> None:
    """The Ray Train per-worker entry point (``TorchTrainer(train_loop_per_worker=train_loop)``)."""
    import ray
    import ray.train

    tctx = ray.train.get_context()
    sink = config["sink"]
    attempt = 1
    try:
        attempt = int(ray.get(sink.next_attempt.remote(tctx.get_world_rank())))
    except Exception:  # noqa: BLE001
        pass
    data = config.get("data")
    if isinstance(data, ray.ObjectRef):
        data = ray.get(data)
    job_id = config["job"].removeprefix("jobs/")
    work_dir = Path(tempfile.gettempdir()) / "swiftmesh-jobs" / job_id / f"rank{tctx.get_world_rank()}"
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    ctx = WorkerContext(
        job=config["job"],
        rank=tctx.get_world_rank(),
        world_size=tctx.get_world_size(),
        local_rank=tctx.get_local_rank(),
        config=config["plan_config"],
        data=data or {},
        settings=config["settings"],
        models=config["models"],
        work_dir=work_dir,
        attempt=attempt,
        labels=config.get("labels", {}),
        _sink=sink,
        _storage=config["storage_path"],
        _run_name=config["run_name"],
        _in_ray=True,
    )
    try:
        sink.register_worker.remote(ctx.rank, ray.get_runtime_context().current_actor)
    except Exception:  # noqa: BLE001
        pass
    ctx.models = _ReportingModels(ctx.models, ctx)
    handler = _SinkLogHandler(ctx)
    logging.getLogger().addHandler(handler)
    kind = config["kind"]
    try:
        ctx.log(placement_report(ctx))
        first = attempt == int(config.get("attempt_offset", 0)) + 1
        announced = None
        if not first:
            try:
                announced = ray.get(sink.last_checkpoint.remote(), timeout=60)
            except Exception:  # noqa: BLE001  (Ray's own checkpoint still applies)
                log.debug("no announced checkpoint", exc_info=True)
        ctx.resume_from, ctx.resume_step = _resolve_checkpoint(config, work_dir, first, announced)
        ctx._push({"type": "started", "attempt": attempt, "resume_step": ctx.resume_step,
                   "node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()})
        artifacts = kind.train(ctx) or []
        if ctx.is_main and artifacts:
            _upload_artifacts(ctx, artifacts, config)
        ctx._push({"type": "finished"})
    except BaseException as e:
        ctx.log(f"{type(e).__name__}: {e}\n{''.join(traceback.format_exc()[-3000:])}", "ERROR")
        from swiftmesh.runtime.errors import SwiftMeshError

        if not ctx._started or isinstance(e, (SwiftMeshError, NonRetryableError)):
            # Deterministic (set-up, configuration) errors: a restart would fail the same way.
            ctx._push({"type": "fatal", "error": f"{type(e).__name__}: {e}"})
        raise
    finally:
        logging.getLogger().removeHandler(handler)
        shutil.rmtree(work_dir, ignore_errors=True)
