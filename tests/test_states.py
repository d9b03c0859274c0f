"""The job state machine."""

import itertools

import pytest

from mlp.core.states import TERMINAL_STATES, JobState, TransitionError, check_transition

HAPPY = [JobState.QUEUED, JobState.STARTING, JobState.RUNNING, JobState.SUCCEEDED]


def test_happy_path_is_legal():
    for a, b in itertools.pairwise(HAPPY):
        check_transition(a, b)


@pytest.mark.parametrize("end", sorted(TERMINAL_STATES))
def test_terminal_states_are_final(end):
    for target in JobState:
        with pytest.raises(TransitionError, match="terminal"):
            check_transition(end, target)


@pytest.mark.parametrize(
    "a,b",
    [(JobState.QUEUED, JobState.RUNNING), (JobState.QUEUED, JobState.SUCCEEDED),
     (JobState.RUNNING, JobState.QUEUED), (JobState.STARTING, JobState.SUCCEEDED)],
)
def test_illegal_moves_name_the_allowed_ones(a, b):
    with pytest.raises(TransitionError) as e:
        check_transition(a, b)
    assert a.value in str(e.value) and "allowed:" in str(e.value)


def test_everything_active_can_fail_time_out_or_be_cancelled():
    for s in (JobState.STARTING, JobState.RUNNING):
        for end in (JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT):
            check_transition(s, end)


def test_preempted_goes_back_to_the_queue():
    check_transition(JobState.RUNNING, JobState.PREEMPTED)
    check_transition(JobState.PREEMPTED, JobState.QUEUED)
