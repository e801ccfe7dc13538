"""The jobs domain's own types: a :class:`Job` record, its :class:`JobState`, and the
:class:`JobEvent` log entries, as the job machinery stores and passes them.

They mirror ``swiftmesh.jobs.v1`` (jobs.proto) field for field; ``swiftmesh.jobkit.servicer``
translates them to and from the proto messages. Times are Unix seconds (``0.0``: unset),
durations seconds. ``Job.spec`` is the JSON of the kind's domain spec (``JobKind.spec_to_json``).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

from swiftmesh.jobkit.settings import JsonDataclass

# google.rpc.Code numbers a JobError carries.
ABORTED = 10
INTERNAL = 13


class JobState(enum.IntEnum):
    """A job's state (values as ``swiftmesh.jobs.v1.JobState``; see :mod:`swiftmesh.jobkit.states`)."""

    UNSPECIFIED = 0
    QUEUED = 1
    RUNNING = 2
    SUCCEEDED = 3
    FAILED = 4
    CANCELLING = 5
    CANCELLED = 6


@dataclass
class Progress(JsonDataclass):
    """How far a job is: optimizer steps done / planned, epoch, fraction in [0, 1], ETA seconds
    (None: unknown) and training throughput (tokens per second)."""

    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    fraction: float = 0.0
    eta_s: float | None = None
    tokens_per_second: float = 0.0


@dataclass
class JobArtifact(JsonDataclass):
    """A model a job registered in the hub: "models/{id}" and "adapter", "full" or "merged"."""

    model: str = ""
    kind: str = ""


@dataclass
class JobError(JsonDataclass):
    """Why a job failed: a ``google.rpc.Code`` number, a reason (e.g. "TRAINING_FAILED") and a message."""

    code: int = 0
    reason: str = ""
    message: str = ""


@dataclass
class Checkpoint(JsonDataclass):
    """A checkpoint in the job's storage: optimizer step, directory, creation time (Unix seconds)."""

    step: int = 0
    path: str = ""
    create_time: float = 0.0


@dataclass
class Resources(JsonDataclass):
    """The Ray resources a job asked for: workers and CPUs, GPUs, memory bytes per worker."""

    num_workers: int = 0
    cpus_per_worker: float = 0.0
    gpus_per_worker: float = 0.0
    memory_bytes_per_worker: int = 0


@dataclass
class Job(JsonDataclass):
    """One job record (see jobs.proto ``Job`` for each field)."""

    name: str
    uid: str = ""
    kind: str = ""
    state: JobState = JobState.UNSPECIFIED
    state_message: str = ""
    spec: dict[str, Any] = field(default_factory=dict)
    progress: Progress = field(default_factory=Progress)
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: list[JobArtifact] = field(default_factory=list)
    error: JobError | None = None
    checkpoints: list[Checkpoint] = field(default_factory=list)
    resources: Resources = field(default_factory=Resources)
    attempt: int = 0
    create_time: float = 0.0
    start_time: float = 0.0
    end_time: float = 0.0
    update_time: float = 0.0
    labels: dict[str, str] = field(default_factory=dict)
    tensorboard_dir: str = ""

    @property
    def last_checkpoint_step(self) -> int:
        """The step of the newest checkpoint kept (0: none)."""
        return self.checkpoints[-1].step if self.checkpoints else 0


@dataclass
class StateChange(JsonDataclass):
    """A job went from ``previous_state`` to ``state``."""

    state: JobState = JobState.UNSPECIFIED
    previous_state: JobState = JobState.UNSPECIFIED
    message: str = ""


@dataclass
class MetricsReport(JsonDataclass):
    """Metrics a worker reported at a step, with the job's progress then."""

    step: int = 0
    epoch: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    progress: Progress = field(default_factory=Progress)


@dataclass
class LogLine(JsonDataclass):
    """A line of the job's log: level ("INFO", "ERROR"...), text and source ("driver", "worker-0"...)."""

    level: str = "INFO"
    message: str = ""
    source: str = ""


@dataclass
class JobEvent(JsonDataclass):
    """One numbered entry of a job's event log; exactly one payload is set.

    ``sequence`` counts from 1 per job and ``time`` (Unix seconds) are assigned when it is stored.
    """

    job: str
    sequence: int = 0
    time: float = 0.0
    state_change: StateChange | None = None
    metrics: MetricsReport | None = None
    checkpoint: Checkpoint | None = None
    log: LogLine | None = None
    artifact: JobArtifact | None = None


def now() -> float:
    """The current time, Unix seconds."""
    return time.time()


__all__ = [
    "ABORTED",
    "INTERNAL",
    "Checkpoint",
    "Job",
    "JobArtifact",
    "JobError",
    "JobEvent",
    "JobState",
    "LogLine",
    "MetricsReport",
    "Progress",
    "Resources",
    "StateChange",
    "now",
]
