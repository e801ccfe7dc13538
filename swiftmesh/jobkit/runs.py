"""The monitor thread of one run of a job (:class:`JobRun`): it launches the run on Ray, turns
the workers' events (started, metrics, checkpoint, log, artifact, fatal) into job updates and
events, shows why Ray has not placed the workers yet, and ends the job in the right state
(SUCCEEDED, CANCELLED, FAILED; FAILED with SERVICE_STOPPED when the service stops, resumed by
the next start).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swiftmesh.jobkit import states
from swiftmesh.jobkit.launcher import RunRequest, launch
from swiftmesh.jobkit.run_monitor import LaunchedRun
from swiftmesh.jobkit.tensorboard import TensorBoardWriter
from swiftmesh.jobkit.types import (
    ABORTED,
    INTERNAL,
    Checkpoint,
    JobArtifact,
    JobError,
    JobEvent,
    MetricsReport,
    Progress,
)
from swiftmesh.runtime.durable import fsync_dir
from swiftmesh.runtime.errors import SwiftMeshError

if TYPE_CHECKING:
    from swiftmesh.jobkit.manager import JobManager

log = logging.getLogger("swiftmesh.jobkit")

#: JobError reason of a job the service's stop interrupted (it resumes when the service starts).
SERVICE_STOPPED = "SERVICE_STOPPED"
POLL_S = 0.5
# How often a run that Ray has not placed yet is asked why (seconds).
WAIT_CHECK_S = 2.0
# Shortest interval between two "waiting for ..." lines in the job's log (seconds).
WAIT_LOG_S = 30.0


class JobRun:
    """Monitor thread of one launch: starts the run, turns worker events into job updates.

    Args:
        mgr: the :class:`~swiftmesh.jobkit.manager.JobManager` that owns the job.
        name: "jobs/{id}".
        resume: continue from the job's last checkpoint (when its directory is still there).
        trace_context: the W3C trace context of the request that started the run.
    """

    def __init__(self, mgr: JobManager, name: str, *, resume: bool, trace_context: dict[str, str] | None = None) -> None:
        self.mgr = mgr
        self.name = name
        self.resume = resume
        self.trace_context = trace_context or {}
        self.launched: LaunchedRun | None = None
        self.cancel_event = threading.Event()
        self.interrupt_event = threading.Event()
        self.thread = threading.Thread(target=self._main, name=f"job-{name}", daemon=True)
        self.tb = TensorBoardWriter(mgr.job_dir(name) / "tensorboard")
        self._pinned: list[str] = []
        self.fatal_error = ""
        self.keep = 2
        self.plan_total = 0
        self.waiting = ""  # the "waiting for ..." reason last shown ("" when none)
        self._waiting_logged_at = 0.0
        self._clear_checks = 0

    # Called from other threads.
    def cancel(self) -> None:
        """Abort the run (the job ends CANCELLED)."""
        self.cancel_event.set()
        launched = self.launched
        if launched is not None:
            launched.cancel()

    def interrupt(self) -> None:
        """Abort the run because the service stops (the job ends FAILED, resumable)."""
        self.interrupt_event.set()
        launched = self.launched
        if launched is not None:
            launched.cancel()

    def _main(self) -> None:
        mgr, name = self.mgr, self.name
        result: dict[str, Any] | None = None
        try:
            job = mgr.store.get(name)
            plan = mgr.load_plan(name)
            self.keep = plan.checkpoints_to_keep
            self.plan_total = plan.total_steps
            kind = mgr.kinds.get(job.kind)
            mgr.set_message(name, "starting Ray" if mgr.runtime.embedded else "connecting to Ray")
            mgr.runtime.ensure()
            if self.cancel_event.is_set() or self.interrupt_event.is_set():
                result = {"status": "aborted"}
                return
            mgr.set_message(name, "starting workers")
            for m in plan.models:
                try:
                    mgr.models.pin(m, name)
                    self._pinned.append(m)
                except Exception:
                    log.debug("pin %s failed", m, exc_info=True)
            resume_from = ""
            if self.resume:
                removed = prune_uncommitted(Path(mgr.storage_path) / name.removeprefix("jobs/"), job.checkpoints)
                if removed:
                    mgr.log_line(name, "removed checkpoints the job never recorded (written when the run was "
                                 f"interrupted, maybe partly): {', '.join(removed)}", "INFO", "driver")
            if self.resume and job.checkpoints:
                last = job.checkpoints[-1].path
                if Path(last).is_dir():
                    resume_from = last
            req = RunRequest(
                job=name,
                kind=kind,
                plan_config=plan.config,
                data=plan.data,
                labels=dict(job.labels),
                settings=mgr.settings,
                models=mgr.models,
                num_workers=plan.num_workers,
                cpus_per_worker=plan.cpus_per_worker,
                gpus_per_worker=plan.gpus_per_worker,
                memory_bytes_per_worker=plan.memory_bytes_per_worker,
                storage_path=mgr.storage_path,
                max_failures=plan.max_failures,
                num_to_keep=plan.checkpoints_to_keep,
                resume_from=resume_from,
                attempt_offset=job.attempt,
                placement_strategy=plan.placement_strategy,
                service=mgr.service,
                trace_context=self.trace_context,
            )
            self.launched = launch(mgr.runtime, req)
            if self.cancel_event.is_set() or self.interrupt_event.is_set():
                self.launched.cancel()
            next_check = time.monotonic() + WAIT_CHECK_S / 2
            while True:
                for ev in self.launched.drain():
                    self._handle(ev)
                result = self.launched.wait(POLL_S)
                if result is not None:
                    for ev in self.launched.drain():
                        self._handle(ev)
                    break
                if time.monotonic() >= next_check:
                    self._check_waiting()
                    next_check = time.monotonic() + WAIT_CHECK_S
        except Exception as e:
            log.exception("job %s: launch failed", name)
            result = {"status": "error", "error": f"{type(e).__name__}: {e}", "type": "LaunchError"}
        finally:
            self._finish(result or {"status": "error", "error": "the run ended without a result"})

    def _check_waiting(self) -> None:
        """Show in Job.state_message (and, now and then, the job's log) why Ray has not placed
        the workers: before the first start (QUEUED) or while a restart waits for room (RUNNING)."""
        mgr, name = self.mgr, self.name
        if self.launched is None or self.cancel_event.is_set() or self.interrupt_event.is_set():
            return
        reason = self.launched.waiting_reason()
        try:
            job = mgr.store.get(name)
        except SwiftMeshError:
            return
        if job.state not in (states.QUEUED, states.RUNNING):
            return
        if reason:
            self._clear_checks = 0
            msg = reason if job.state == states.QUEUED else (
                f"a worker was lost; restarting from the last checkpoint once Ray has room: {reason}")
            if msg != job.state_message:
                mgr.set_message(name, msg)
            now = time.monotonic()
            if reason != self.waiting and (not self.waiting or now - self._waiting_logged_at >= WAIT_LOG_S):
                mgr.log_line(name, msg, "INFO", "driver")
                self._waiting_logged_at = now
            self.waiting = reason
        elif self.waiting:
            # Ray re-creates a placement group that waited too long: two clear checks in a row.
            self._clear_checks += 1
            if self._clear_checks >= 2:
                self.waiting = ""
                mgr.set_message(name, "resources reserved; starting workers" if job.state == states.QUEUED
                                 else "resources reserved; restarting workers")

    def _finish(self, result: dict[str, Any]) -> None:
        mgr, name = self.mgr, self.name
        try:
            if self.launched is not None:
                self.launched.close()
            for m in self._pinned:
                try:
                    mgr.models.unpin(m, name)
                except Exception:  # noqa: BLE001
                    pass
            self.tb.close()
            job = mgr.store.get(name)
            status = result.get("status")
            if self.fatal_error and status != "ok" and not self.cancel_event.is_set():
                result = {"status": "error", "error": self.fatal_error}
                status = "error"
            if self.interrupt_event.is_set() and status != "ok":
                msg = f"the {mgr.service} service stopped; the job resumes from its last checkpoint when it starts again"
                target = states.FAILED if job.state != states.CANCELLING else states.CANCELLED
                mgr.set_state(name, target, msg, error=JobError(ABORTED, SERVICE_STOPPED, msg) if target == states.FAILED else None)
            elif status == "ok":
                if job.state == states.QUEUED:
                    mgr.set_state(name, states.RUNNING, "running")
                mgr.set_state(name, states.SUCCEEDED, "succeeded")
            elif self.cancel_event.is_set() or job.state == states.CANCELLING or (status == "aborted" and not self.fatal_error):
                if job.state != states.CANCELLING:
                    mgr.set_state(name, states.CANCELLING, "cancel requested")
                step = job.last_checkpoint_step
                mgr.set_state(name, states.CANCELLED,
                               f"cancelled; kept checkpoint step {step}" if step else "cancelled")
            else:
                err = result.get("error", "unknown error")
                mgr.log_line(name, f"job failed: {err}", "ERROR", "driver")
                mgr.set_state(name, states.FAILED, err.splitlines()[-1][:500] if err else "failed",
                               error=JobError(INTERNAL, "TRAINING_FAILED", err))
        except Exception:
            log.exception("job %s: finishing failed", name)
        finally:
            mgr.run_ended(name)

    # Worker events -> job updates.
    def _handle(self, ev: dict[str, Any]) -> None:
        mgr, name = self.mgr, self.name
        t = ev.get("type")
        try:
            if t == "started":
                if ev.get("source") != "worker-0":
                    return
                attempt = int(ev.get("attempt", 1))

                def mutate(j):
                    j.attempt = max(j.attempt, attempt)

                job, _ = mgr.store.update(name, mutate)
                self.waiting = ""
                if job.state == states.QUEUED:
                    mgr.set_state(name, states.RUNNING, "running")
                elif job.state == states.RUNNING and job.state_message != "running":
                    mgr.set_message(name, "running")
                rs = int(ev.get("resume_step", 0))
                if rs:
                    mgr.log_line(name, f"attempt {attempt}: resumed from checkpoint step {rs}", "INFO", "driver")
                elif attempt > 1:
                    mgr.log_line(name, f"attempt {attempt}: restarted from the beginning", "INFO", "driver")
            elif t == "metrics":
                self._metrics(ev)
            elif t == "checkpoint":
                ck = Checkpoint(step=int(ev["step"]), path=str(ev["path"]),
                                create_time=float(int(ev.get("time", time.time()))))
                keep = max(1, self.keep)

                def mutate(j):
                    kept = [c for c in j.checkpoints if c.step != ck.step] + [ck]
                    kept.sort(key=lambda c: c.step)
                    j.checkpoints = kept[-keep:]

                _, stored = mgr.store.update(name, mutate, JobEvent(job=name, checkpoint=ck))
                mgr.events.deliver(stored)
            elif t == "fatal":
                if not self.fatal_error:
                    self.fatal_error = str(ev.get("error", "worker error"))
                    mgr.log_line(name, f"non-retryable error on {ev.get('source')}; stopping the run", "ERROR", "driver")
                    if self.launched is not None:
                        self.launched.cancel()
            elif t == "log":
                mgr.log_line(name, str(ev.get("message", "")), str(ev.get("level", "INFO")), str(ev.get("source", "worker")))
            elif t == "artifact":
                art = JobArtifact(model=str(ev["model"]), kind=str(ev.get("kind", "")))

                def mutate(j):
                    if all(a.model != art.model for a in j.artifacts):
                        j.artifacts.append(art)

                _, stored = mgr.store.update(name, mutate, JobEvent(job=name, artifact=art))
                mgr.events.deliver(stored)
        except Exception:
            log.exception("job %s: bad worker event %r", name, ev)

    def _metrics(self, ev: dict[str, Any]) -> None:
        mgr, name = self.mgr, self.name
        step = int(ev.get("step", 0))
        total = int(ev.get("total_steps", 0)) or self.plan_total
        metrics = {k: float(v) for k, v in (ev.get("metrics") or {}).items()}
        progress = Progress(step=step, total_steps=total, epoch=float(ev.get("epoch", 0.0)))
        if total:
            progress.fraction = min(1.0, step / total)
        if ev.get("eta_seconds") is not None:
            progress.eta_s = float(ev["eta_seconds"])
        if ev.get("tokens_per_second") is not None:
            progress.tokens_per_second = float(ev["tokens_per_second"])

        def mutate(j):
            tps = j.progress.tokens_per_second
            j.progress = dataclasses.replace(progress)
            if not progress.tokens_per_second and tps:
                j.progress.tokens_per_second = tps
            j.metrics.update(metrics)

        report = MetricsReport(step=step, epoch=progress.epoch, metrics=metrics, progress=progress)
        _, stored = mgr.store.update(name, mutate, JobEvent(job=name, metrics=report))
        if metrics:
            self.tb.scalars(step, metrics)
        mgr.events.deliver(stored)


#: Ray Train's record of a run's checkpoints in its storage directory (ray.train.v2 constants).
RAY_CHECKPOINT_SNAPSHOT = "checkpoint_manager_snapshot.json"


def prune_uncommitted(run_dir: Path, checkpoints: list[Checkpoint]) -> list[str]:
    """Before a run resumes: remove from its storage directory every ``checkpoint-*`` directory the
    job does not list (the job records a checkpoint only once it is complete and on disk, so the
    others are partial, or complete but never recorded because the service died first), and
    Ray Train's own checkpoint record, which may name them (Ray would fail deleting a checkpoint
    that is gone; the job's list is the one record). Returns the names removed, sorted."""
    if not run_dir.is_dir():
        return []
    keep = {Path(c.path).name for c in checkpoints}
    removed = sorted(p.name for p in run_dir.glob("checkpoint-*") if p.name not in keep)
    for name in removed:
        shutil.rmtree(run_dir / name, ignore_errors=True)
    (run_dir / RAY_CHECKPOINT_SNAPSHOT).unlink(missing_ok=True)
    if removed:
        fsync_dir(run_dir)
    return removed
