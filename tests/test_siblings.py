"""Siblings (web processes sharing a port): a status or a cancel asked of the
process that holds the job is answered by that process's own greenlets.

In one process: two real `Pipe`s with real journals (batch sync) on a shared
port, their links scripted so that jobs stay queued, talking over the real
unix sockets of `greenpipe.siblings`.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable

import gevent
import pytest

from greenpipe.errors import Unavailable
from greenpipe.jobs import Envelope
from greenpipe.pipe import Pipe
from tests.test_core import Clock, make, ready

pytestmark = pytest.mark.inprocess


def _pipe(tmp_path, name: str) -> Pipe:
    d = make(Clock(), journal_dir=tmp_path / name, journal_sync="batch",
             reuse_port="yes", port=45999, host="127.0.0.1", status_ttl=600)  # fmt: skip
    pipe = Pipe(d.settings)
    pipe.dispatcher = d
    pipe.start()
    for link in d.links:
        ready(d, link, credit=0)  # nothing leaves: jobs stay queued
    return pipe


@pytest.fixture
def pair(tmp_path, monkeypatch):
    # The siblings' sockets live in the temporary directory: one of the test's own.
    monkeypatch.setattr(
        tempfile, "tempdir", tempfile.mkdtemp(prefix="sib-", dir="/tmp")
    )
    a, b = _pipe(tmp_path, "a"), _pipe(tmp_path, "b")
    yield a, b
    for pipe in (a, b):
        with contextlib.suppress(Exception):  # a test may have closed it
            pipe.close(0.1)


def _job() -> Envelope:
    return Envelope.new(b"POST", b"/jobs", b"", b"", b"{}")


def _stall(pipe: Pipe, monkeypatch, seconds: float) -> None:
    """The pipe's journal writes take `seconds` (a stalled disk)."""
    real = pipe.dispatcher.journal.append_jobs

    def slow(*args, **kwargs):
        gevent.sleep(seconds)  # sleep-ok: stands for the disk, not a wait
        return real(*args, **kwargs)

    monkeypatch.setattr(pipe.dispatcher.journal, "append_jobs", slow)


def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"within {timeout} s: {what}"
        gevent.sleep(0.01)  # sleep-ok: yields to the pipes' greenlets between checks


def test_a_sibling_cancels_a_job_another_process_holds(pair):
    a, b = pair
    job = a.dispatcher.submit(_job())
    assert a.status(job.id)["status"] == "queued"
    assert b.status(job.id)["status"] == "queued"
    got = b.cancel(job.id)
    assert got is not None and got["status"] == "cancelled", got
    assert a.status(job.id)["status"] == "cancelled"


def test_a_cancel_answered_late_says_it_may_still_take_effect(pair, monkeypatch):
    a, b = pair
    job = a.dispatcher.submit(_job())
    _stall(a, monkeypatch, 1.5)  # longer than a sibling waits for an answer
    with pytest.raises(Unavailable, match="the cancel may still take effect"):
        b.cancel(job.id)
    _until(lambda: a.status(job.id)["status"] == "cancelled", 5,
           "the cancel noted before the asker gave up is made")  # fmt: skip
    assert b.cancel(job.id)["status"] == "cancelled", "asking again tells"


def test_no_reply_to_a_sibling_outlives_the_pipe(pair, monkeypatch):
    a, b = pair
    job = a.dispatcher.submit(_job())
    _stall(a, monkeypatch, 1.5)
    with pytest.raises(Unavailable):
        b.cancel(job.id)
    assert len(a._replies) == 1, "the reply still waits for its group"
    a.close(0.1)
    assert len(a._replies) == 0, "close ended every reply still waiting"
