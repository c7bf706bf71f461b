"""Admission and group commit in one process: keys answer only once their job is kept.

Issue 24, cases 1 and 2: a real `Dispatcher` with a real `Journal` on a
temporary directory and scripted links (no sockets), its disk made to fail
or stall on purpose.
"""

from __future__ import annotations

import struct

import gevent
import gevent.event
import pytest

from greenpipe.admission import IdempotencyKeys, check_key
from greenpipe.errors import Unavailable
from greenpipe.jobs import Envelope
from greenpipe.journal import JournalError
from tests.test_core import Clock, make, ready


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
        gevent.sleep(0.05)  # the disk is slow: the retry arrives meanwhile
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
