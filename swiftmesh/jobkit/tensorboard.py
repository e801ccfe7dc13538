"""TensorBoard event files of a job, written by the service from the metrics the workers report.

One directory per job (``Job.tensorboard_dir``); scalars are tagged as in ``Job.metrics``
("train/loss", "train/learning_rate", "eval/loss", "rewards/margins"), at the optimizer step.
Written with ``torch.utils.tensorboard.SummaryWriter`` (the ``tensorboard`` package).
"""

from __future__ import annotations

import threading
from pathlib import Path


class TensorBoardWriter:
    """Scalars of one job; safe from any thread. Open lazily, flushed after every write."""

    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = Path(log_dir)
        self._writer = None
        self._lock = threading.Lock()

    def scalars(self, step: int, metrics: dict[str, float]) -> None:
        """Write ``metrics`` (tag -> value) at ``step``."""
        if not metrics:
            return
        with self._lock:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self.log_dir.mkdir(parents=True, exist_ok=True)
                self._writer = SummaryWriter(str(self.log_dir))
            for tag, value in metrics.items():
                self._writer.add_scalar(tag, float(value), int(step))
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None


def read_scalars(log_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """All scalars in a TensorBoard directory: tag -> [(step, value)] (for tests and tools)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags().get("scalars", [])}
