"""Following a Ray Train run that is in flight: its events, why it waits, its end, cancelling it.

A :class:`LaunchedRun` holds the two actors :func:`swiftmesh.jobkit.launcher.launch` started
(the event sink the workers push to, and the driver calling ``TorchTrainer.fit()``) and the
driver's result reference. :meth:`LaunchedRun.cancel` aborts the Ray Train controller (which
removes the placement group) and kills the worker actors at once, so the resources are free
again within seconds.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from swiftmesh.jobkit.launcher import RunRequest

log = logging.getLogger("swiftmesh.jobkit.run_monitor")


def error_text(e: BaseException) -> str:
    """The most useful message of a Ray Train failure (the worker's own exception)."""
    text = str(e)
    # WorkerGroupError carries per-worker exceptions.
    errs = getattr(e, "worker_failures", None) or getattr(e, "_worker_failures", None)
    if isinstance(errs, dict) and errs:
        first = next(iter(errs.values()))
        text = f"{type(first).__name__}: {first}"
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return "\n".join(lines[-12:])[:4000]


class LaunchedRun:
    """A run in flight: drain its events, wait for its end, cancel it.

    ``sink`` and ``driver`` are the run's Ray actor handles, ``ref`` the driver's ``run`` result
    (``{"status": "ok", "checkpoint": path}``, ``{"status": "error", "error": text, "type": name}``
    or ``{"status": "aborted"}``), ``req`` the launch it came from (for :meth:`waiting_reason`).
    """

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
        except Exception:  # a status probe never breaks the run
            log.debug("waiting_reason failed", exc_info=True)
            return None

    def drain(self) -> list[dict]:
        """The events the workers pushed since the last drain (``[]`` when the sink does not
        answer within 30 s)."""
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
            return {"status": "error", "error": error_text(e), "type": type(e).__name__}

    def cancel(self) -> None:
        """Abort the controller and kill the workers; returns once Ray has been told."""
        import ray

        self.cancel_requested = True
        try:
            handles = ray.get(self.sink.worker_handles.remote(), timeout=5)
        except Exception:  # noqa: BLE001
            handles = []
        with contextlib.suppress(Exception):
            ray.get(self.driver.abort.remote(handles), timeout=25)

    def close(self) -> None:
        """Kill the run's driver and sink actors (errors ignored)."""
        import ray

        for a in (self.driver, self.sink):
            with contextlib.suppress(Exception):
                ray.kill(a, no_restart=True)
