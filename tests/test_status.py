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


def test_every_unfinished_answer_is_built_in_one_place():
    """Issue 30: a status answer was built in four places, and one copy forgot
    `scheduled`. Now `jobs.unfinished` builds every answer of a job not finished
    (FinishedJobs the finished ones); this pins what each state says."""
    import time

    from greenpipe.jobs import Envelope, unfinished

    job = Envelope.new(b"POST", b"/", b"", b"", b"{}")
    job.named("p-1")
    job.attempt, job.retries, job.not_before = 2, 1, time.time() + 60
    job.errors = ("boom",)
    keys = {
        status: set(unfinished(job, status, "w").keys())
        for status in (Status.QUEUED, Status.IN_FLIGHT, Status.SCHEDULED,
                       Status.RETRYING)
    }  # fmt: skip
    assert keys[Status.SCHEDULED] == {"id", "status", "due_at"}
    assert keys[Status.QUEUED] == keys[Status.IN_FLIGHT] == {"id", "status",
                                                             "worker", "attempt"}  # fmt: skip
    assert keys[Status.RETRYING] == {"id", "status", "worker", "attempt", "runs",
                                     "next_at", "error"}  # fmt: skip
    assert unfinished(job, Status.RETRYING)["error"] == "boom"
    assert not any(s.finished or s.waiting for s in (Status.QUEUED, Status.IN_FLIGHT))
