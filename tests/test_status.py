"""`Status`: the one vocabulary of a job's states, and which are finished or waiting."""

from __future__ import annotations

import pytest

from greenpipe.jobs import Envelope, Status
from greenpipe.protocol import EVERYTHING
from tests.test_core import Clock, ack, make
from tests.test_routing_model import join

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
    assert keys[Status.SCHEDULED] == {"id", "name", "status", "due_at"}
    assert keys[Status.QUEUED] == keys[Status.IN_FLIGHT] == {"id", "name", "status",
                                                             "worker", "attempt"}  # fmt: skip
    assert keys[Status.RETRYING] == {"id", "name", "status", "worker", "attempt",
                                     "runs", "next_at", "error"}  # fmt: skip
    assert unfinished(job, Status.QUEUED)["name"] == "/"  # forwarded: its path
    assert unfinished(job.__class__.new(b"", b"", b"", b"", b"{}", name=b"ship"),
                      Status.QUEUED)["name"] == "ship"  # fmt: skip
    assert unfinished(job, Status.RETRYING)["error"] == "boom"
    assert not any(s.finished or s.waiting for s in (Status.QUEUED, Status.IN_FLIGHT))


def test_a_status_answer_names_the_job_before_and_after_it_finished():
    """Issue 33 (names everywhere): GET /jobs/<id> says which job it is, queued,
    in flight and finished, a forwarded request by its path; before, only the
    dead-letter file had the name."""
    d = make(Clock(), workers="127.0.0.1:1")
    join(d, d.links[0], EVERYTHING, 5)
    ship = d.submit(Envelope.new(b"", b"", b"", b"", b"{}", name=b"ship_order"))
    forwarded = d.submit(Envelope.new(b"POST", b"/jobs", b"", b"", b"{}"))
    assert (d.status(ship.id)["status"], d.status(ship.id)["name"]) == (
        "queued",
        "ship_order",
    )
    d.flush()
    assert (d.status(ship.id)["status"], d.status(ship.id)["name"]) == (
        "in_flight",
        "ship_order",
    )
    ack(d, d.links[0], ship.id, forwarded.id)
    assert (d.status(ship.id)["status"], d.status(ship.id)["name"]) == (
        "done",
        "ship_order",
    )
    assert d.status(forwarded.id)["name"] == "/jobs"
    queued = d.submit(Envelope.new(b"", b"", b"", b"", b"{}", name=b"refund"))
    d.flush()  # in flight: sent to the one worker
    waiting = d.submit(Envelope.new(b"", b"", b"", b"", b"{}", name=b"refund"))
    assert d.cancel(waiting.id) == d.status(waiting.id)
    assert (d.status(waiting.id)["status"], d.status(waiting.id)["name"]) == (
        "cancelled",
        "refund",
    )
    assert d.status(queued.id)["name"] == "refund"
