"""Admission and group commit in one process: keys answer only once their job is kept.

Issue 24, cases 1 and 2: a real `Dispatcher` with a real `Journal` on a
temporary directory and scripted links (no sockets), its disk made to fail
or stall on purpose.
"""

from __future__ import annotations

import struct
import time

import gevent
import gevent.event
import pytest

from greenpipe import protocol
from greenpipe.admission import IdempotencyKeys, check_key
from greenpipe.errors import Unavailable
from greenpipe.jobs import Envelope
from greenpipe.journal import JournalError, tail
from tests.journal_support import reopened
from tests.test_core import Clock, ack, make, ready

pytestmark = pytest.mark.inprocess  # make test-fast


def _job() -> Envelope:
    return Envelope.new(b"POST", b"/jobs", b"", b"", b"{}")


@pytest.fixture
def web(tmp_path):
    d = make(Clock(), journal_dir=tmp_path / "journal", journal_sync="batch")
    d.start()
    for link in d.links:
        ready(d, link)
    yield d
    d.close()


def test_a_retry_with_the_same_key_waits_for_the_first_jobs_write(web, monkeypatch):
    """A retry arriving while the first job's write is under way gets no 202
    before that write; when it fails, both get 503 and the key names no job."""
    real = web.journal.append_jobs
    started = gevent.event.Event()

    def failing(jobs, keys=None):
        started.set()
        gevent.sleep(
            0.05
        )  # sleep-ok: the deliberate slow disk (the disk is slow: the retry arrives meanwhile)
        raise JournalError("disk full (on purpose)")

    monkeypatch.setattr(web.journal, "append_jobs", failing)
    first = gevent.spawn(web.submit, _job(), "order-1")
    assert started.wait(5), "the first job's group write did not start"
    retry = gevent.spawn(web.submit, _job(), "order-1")
    gevent.joinall([first, retry], timeout=5)
    for each in (first, retry):
        assert isinstance(each.exception, Unavailable), each.exception or each.value
        assert "disk full" in str(each.exception)
    assert web.admission.keys.find("order-1") is None, "the key names no job"
    monkeypatch.setattr(web.journal, "append_jobs", real)
    again = gevent.spawn(web.submit, _job(), "order-1")
    again.join(5)
    assert again.successful(), again.exception
    assert web.admission.keys.find("order-1") == again.value.id, (
        "a new job, kept this time"
    )
    repeat = web.submit(_job(), "order-1")
    assert repeat.id == again.value.id, "now the key answers with its job"
    assert web.books.accepted == 1


def test_any_error_in_a_groups_write_answers_503_and_the_next_group_goes_on(
    web, monkeypatch
):
    real = web.journal.append_jobs

    def broken(jobs, keys=None):
        raise struct.error("a bug in the write (on purpose)")

    monkeypatch.setattr(web.journal, "append_jobs", broken)
    bad = gevent.spawn(web.submit, _job())
    bad.join(5)
    assert isinstance(bad.exception, Unavailable), bad.exception or "still parked"
    assert "struct.error" in str(bad.exception) or "on purpose" in str(bad.exception)
    monkeypatch.setattr(web.journal, "append_jobs", real)
    good = gevent.spawn(web.submit, _job())
    good.join(5)
    assert good.successful(), good.exception or "the next group hung"


@pytest.mark.parametrize("key", ["é", "a\nb", "", "x" * 256, "tab\there"])
def test_a_bad_key_is_refused_at_every_door_naming_the_rule(web, key):
    with pytest.raises(ValueError, match="not 1-255 printable ASCII"):
        check_key(key)
    if key:  # "" means no key at the dispatcher's door
        with pytest.raises(ValueError, match="not 1-255 printable ASCII"):
            web.submit(_job(), key)
    assert web.books.accepted == 0


def test_keys_expire_after_their_window():
    now = [1000.0]
    keys = IdempotencyKeys(ttl=10, limit=2, clock=lambda: now[0])
    keys.remember("a", "job-a")
    now[0] += 9.9
    assert keys.find("a") == "job-a"
    now[0] += 0.2
    assert keys.find("a") is None and keys.live() == {}
    keys.remember("b", "job-b")
    keys.remember("c", "job-c")
    keys.remember("d", "job-d")
    assert len(keys) == 2 and keys.find("b") is None, "at most `limit`, oldest out"


def _slow_disk(monkeypatch) -> None:
    """Every sync of the journal takes 0.3 s longer: a slow disk stands in."""
    from greenpipe.journal import tail

    real = tail._offload

    def slow(call, *args):
        gevent.sleep(0.3)  # sleep-ok: the deliberate slow disk, not a wait for an event
        return real(call, *args)

    monkeypatch.setattr(tail, "_offload", slow)


def _until(done, what: str, timeout: float = 5.0) -> None:
    """Yield to the other greenlets until `done()`, or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        gevent.sleep(0.001)  # sleep-ok: a yield in a polling loop with a deadline


# -- found by a review (issue 24): keys, drain and close around group commit ---


@pytest.mark.parametrize("journal", ["off", "on"])
def test_one_key_makes_one_job_even_when_both_requests_wait_for_the_barrier(
    tmp_path, journal
):
    """Two requests with the same key arrive before the barrier is met (a
    client retrying at start-up): both look the key up before check() waits
    for the barrier, then both make a job."""
    flags = {"ready_timeout": 5}
    if journal == "on":
        flags["journal_dir"] = tmp_path / "journal"
    d = make(Clock(), **flags)
    d.start()
    try:
        first = gevent.spawn(d.submit, _job(), "order-1")
        retry = gevent.spawn(d.submit, _job(), "order-1")
        gevent.sleep(
            0
        )  # sleep-ok: an idle yield, not a wait (an idle yield: both run until they wait for the barrier)
        for link in d.links:
            ready(d, link)
        gevent.joinall([first, retry], timeout=5)
        assert first.successful() and retry.successful()
        assert first.value.id == retry.value.id, "one key, two jobs"
        assert d.books.accepted == 1
    finally:
        d.close()


def test_drain_waits_for_jobs_parked_in_group_commit(tmp_path, monkeypatch):
    """drain() counts queued and in-flight jobs, not those in a group being
    written nor in the open group behind it: with a slow sync (batch mode) it
    answers 0 at once while requests are parked, then close() kills the
    dispatcher greenlet that would write the next group: that request never
    gets an answer (neither 202 nor 503)."""

    d = make(Clock(), journal_dir=tmp_path / "journal", journal_sync="batch")
    d.start()
    for link in d.links:
        ready(d, link)
    _slow_disk(monkeypatch)
    first = gevent.spawn(d.submit, _job())
    _until(lambda: d.admission._commit.committing, "the first group in its sync")
    second = gevent.spawn(d.submit, _job())
    _until(lambda: d.admission.in_commit() == 2, "the second job parked behind it")
    left = d.drain(2.0)
    d.close()
    gevent.joinall([first, second], timeout=2)
    assert left == 2 and second.ready(), (
        f"drain said {left} left; first answered: {first.ready()}, "
        f"second answered: {second.ready()} (parked for good)"
    )


def test_close_during_a_groups_sync_answers_503_for_a_job_that_runs_later(
    tmp_path, monkeypatch
):
    """drain() returns at once while a group is in its thread-pool sync (its
    jobs are not counted); close() then closes the segment's fd under it: the
    sync fails with EBADF, the cut back and the CANCEL fail too, the request
    gets 503, yet its JOB record is in the file: the next start runs it."""
    from greenpipe.errors import Unavailable
    from greenpipe.journal import Journal

    d = make(Clock(), journal_dir=tmp_path / "journal", journal_sync="batch")
    d.start()
    for link in d.links:
        ready(d, link)
    _slow_disk(monkeypatch)
    job = _job()
    request = gevent.spawn(d.submit, job)
    _until(lambda: d.admission._commit.committing, "the group in its sync")
    d.drain(2.0)
    d.close()
    request.join(2)
    monkeypatch.undo()
    journal = Journal(str(tmp_path / "journal"))
    replayed = [each.id for each in journal.open().jobs]
    journal.close()
    if isinstance(request.exception, Unavailable):
        assert job.id not in replayed, "answered 503, and replayed at the next start"
    else:  # the group finished before the close: 202, and owed
        assert request.successful() and job.id in replayed, request.exception


def test_acks_received_before_a_clean_close_during_a_sync_are_kept(
    tmp_path, monkeypatch
):
    """close() -> journal.close() -> flush_acks(), which skips while a group
    is being written (_busy): ACK records in memory are dropped, and a clean
    stop replays jobs that were acknowledged before it."""
    from greenpipe.journal import Journal

    d = make(Clock(), journal_dir=tmp_path / "journal", journal_sync="batch")
    d.start()
    for link in d.links:
        ready(d, link)
    done = gevent.spawn(d.submit, _job())
    done.join(5)
    _until(lambda: any(link.jobs for link in d.links), "the first job sent")
    holder = next(link for link in d.links if link.jobs)
    _slow_disk(monkeypatch)
    gevent.spawn(d.submit, _job())
    _until(lambda: d.admission._commit.committing, "a group in its sync")
    ack(d, holder, done.value.id)  # acknowledged: its ACK record waits in memory
    d.drain(1.0)
    d.close()
    monkeypatch.undo()
    journal = Journal(str(tmp_path / "journal"))
    replayed = [job.id for job in journal.open().jobs]
    journal.close()
    assert done.value.id not in replayed, "acknowledged, replayed after a clean stop"


def test_an_ack_read_while_close_waits_for_a_group_still_counts(tmp_path, monkeypatch):
    """Review of issue 29: acks read while close() waits for a batch sync were
    left in the link unapplied, then cleared with it: the job ran again after
    the restart."""
    clock = Clock()
    journal = tmp_path / "journal"
    d = make(clock, workers="127.0.0.1:1", journal_dir=journal, journal_sync="batch")
    d.start()
    link = d.links[0]
    ready(d, link)
    firsts = [
        gevent.spawn(d.submit, Envelope.new(b"POST", b"/", b"", b"", b"{}"))
        for _ in range(2)
    ]
    gevent.sleep(0)  # sleep-ok: one turn for the spawned greenlets (scripted)
    d.flush()
    a, b = [g.get(timeout=5) for g in firsts]
    d.flush()
    assert a.key in link.jobs and b.key in link.jobs  # A and B sent to the worker
    # A second job's group is being synced when the web stops: the sync is slow.
    gate = gevent.event.Event()
    real = tail._offload

    def slow(call, *args):
        gate.wait(5)
        return real(call, *args)

    monkeypatch.setattr(tail, "_offload", slow)
    second = gevent.spawn(d.submit, Envelope.new(b"POST", b"/", b"", b"", b"{}"))
    gevent.sleep(0)  # sleep-ok: one turn for the spawned greenlets (scripted)
    d.flush()  # the writer greenlet is in fdatasync
    closing = gevent.spawn(d.close)
    gevent.sleep(0)  # sleep-ok: a turn; close() heard nothing, and waits for the group
    # The worker acknowledges A, then B, in two messages: the reader reads each
    # and posts the link; the dispatcher greenlet still runs one more turn.
    link._unread.append(protocol.encode_acks([a.key]))
    d.inbox.post(link)
    gevent.sleep(0)  # sleep-ok: one turn for the spawned greenlets (scripted)
    link._unread.append(protocol.encode_acks([b.key]))
    d.inbox.post(link)
    gevent.sleep(0)  # sleep-ok: one turn for the spawned greenlets (scripted)
    gate.set()
    closing.get(timeout=5)
    second.join(timeout=5)
    ids, _ = reopened(journal)
    assert b.id not in ids, "B's ACK was read before the sockets closed"
