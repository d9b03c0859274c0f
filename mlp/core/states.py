"""The job state machine: which states exist and which transitions between them are legal."""

from __future__ import annotations

import enum


class JobState(enum.StrEnum):
    QUEUED = "Queued"
    STARTING = "Starting"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"
    TIMED_OUT = "TimedOut"
    PREEMPTED = "Preempted"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES

    @property
    def active(self) -> bool:
        """Whether the job holds (or is acquiring) processes and resources."""
        return self in (JobState.STARTING, JobState.RUNNING)


TERMINAL_STATES = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT}
)

# Preempted is transient: a preempted job goes back to the queue with a higher attempt count.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.STARTING, JobState.CANCELLED, JobState.FAILED}),
    JobState.STARTING: frozenset(
        {
            JobState.RUNNING,
            JobState.FAILED,
            JobState.CANCELLED,
            JobState.TIMED_OUT,
            JobState.PREEMPTED,
        }
    ),
    JobState.RUNNING: frozenset(
        {
            JobState.SUCCEEDED,
            JobState.FAILED,
            JobState.CANCELLED,
            JobState.TIMED_OUT,
            JobState.PREEMPTED,
        }
    ),
    JobState.PREEMPTED: frozenset({JobState.QUEUED, JobState.CANCELLED, JobState.FAILED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
    JobState.TIMED_OUT: frozenset(),
}


class TransitionError(ValueError):
    """A transition the state machine does not allow (e.g. Succeeded -> Running)."""

    def __init__(self, current: JobState, target: JobState):
        allowed = ", ".join(sorted(s.value for s in TRANSITIONS[current])) or "none (terminal)"
        super().__init__(
            f"a job in state {current.value} cannot move to {target.value}; allowed: {allowed}"
        )
        self.current = current
        self.target = target


def check_transition(current: JobState, target: JobState) -> None:
    """Raise TransitionError unless current -> target is a legal move."""
    if target not in TRANSITIONS[current]:
        raise TransitionError(current, target)
