"""`Status`: the one vocabulary of a job's states, and which are finished or waiting."""

from __future__ import annotations

import pytest

from greenpipe.jobs import Status

pytestmark = pytest.mark.inprocess  # make test-fast


def test_status_says_which_states_are_finished_and_which_wait():
    finished = {s for s in Status if s.finished}
    waiting = {s for s in Status if s.waiting}
    assert finished == {Status.DONE, Status.FAILED, Status.DEAD, Status.CANCELLED,
                        Status.UNACKNOWLEDGED}  # fmt: skip
    assert waiting == {Status.SCHEDULED, Status.RETRYING}
    assert not (Status.QUEUED.finished or Status.IN_FLIGHT.finished)
    assert not Status.TIMEOUT.finished, "an outcome of waiting, not a job's state"
    assert not finished & waiting
