"""The job state machine of ``swiftmesh.jobs.v1`` (see jobs.proto)::

    QUEUED -> RUNNING -> SUCCEEDED
                      -> FAILED      (ResumeJob -> QUEUED)
    QUEUED | RUNNING  -> CANCELLING -> CANCELLED (ResumeJob -> QUEUED)
    RUNNING -> QUEUED  (the service restarted after a crash: the job resumes on its own)

A job that fails before it runs (launch error) goes QUEUED -> FAILED. A cancel that arrives
while the workers are finishing may still end SUCCEEDED.
"""

from __future__ import annotations

from swiftmesh.jobkit.types import JobState
from swiftmesh.runtime.errors import FailedPrecondition

UNSPECIFIED, QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLING, CANCELLED = (
    JobState.UNSPECIFIED,
    JobState.QUEUED,
    JobState.RUNNING,
    JobState.SUCCEEDED,
    JobState.FAILED,
    JobState.CANCELLING,
    JobState.CANCELLED,
)

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    UNSPECIFIED: frozenset({QUEUED}),
    QUEUED: frozenset({RUNNING, CANCELLING, CANCELLED, FAILED}),
    RUNNING: frozenset({SUCCEEDED, FAILED, CANCELLING, QUEUED}),  # QUEUED: resumed after a restart
    CANCELLING: frozenset({CANCELLED, FAILED, SUCCEEDED}),
    FAILED: frozenset({QUEUED}),
    CANCELLED: frozenset({QUEUED}),
    SUCCEEDED: frozenset(),
}

TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
ACTIVE = frozenset({QUEUED, RUNNING, CANCELLING})
RESUMABLE = frozenset({FAILED, CANCELLED})


def name(state: int) -> str:
    """"RUNNING" for JobState.RUNNING (or its int value)."""
    return JobState(state).name


def can_transition(old: int, new: int) -> bool:
    """Whether the state machine allows ``old -> new``."""
    return new in TRANSITIONS.get(JobState(old), frozenset())


def check_transition(job_name: str, old: int, new: int) -> None:
    """Raise FailedPrecondition (reason INVALID_JOB_STATE) unless ``old -> new`` is allowed."""
    if not can_transition(old, new):
        raise FailedPrecondition(
            f"job {job_name} is {name(old)}; it cannot become {name(new)}",
            reason="INVALID_JOB_STATE",
            metadata={"job": job_name, "state": name(old)},
        )
