"""The journal and its disk: one sync per group, off the event loop; a write
or sync that fails, stalls or runs out of space never leaves a 503's job to
replay, nor loses a 202's. A real `Journal` on tmp_path, one process; several
were a failing reproduction first (reviews of issues 20 and 24).
"""

from __future__ import annotations

import errno
import os
import threading
import time

import gevent
import pytest

from greenpipe.journal import (
    Journal,
    JournalError,
    compaction,
    tail,
)
from tests.journal_support import (
    kill,
    make_jobs,
    make_named_jobs,
    reopened,
    reopened_jobs,
    segment_files,
)

pytestmark = pytest.mark.inprocess  # make test-fast

# -- syncs -------------------------------------------------------------------------------


def test_batch_mode_syncs_each_group(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(os, "fdatasync", lambda fd: synced.append(fd))
    journal = Journal(str(tmp_path), sync="batch")
    journal.open()
    journal.append_jobs(make_named_jobs(5))
    journal.append_jobs(make_named_jobs(5, start=5))
    assert len(synced) == 2, "one fdatasync per group commit, not per job"
    journal.close()


def test_every_sync_runs_off_the_event_loop(tmp_path, monkeypatch):
    """Issue 24, case 4: a sync that stalls must never hold the event loop."""
    import threading

    loop_thread, threads = threading.get_ident(), []
    for name in ("fdatasync", "fsync"):
        monkeypatch.setattr(os, name, lambda fd: threads.append(threading.get_ident()))
    monkeypatch.setattr(compaction, "SEGMENT_ROLL", 256)
    journal = Journal(str(tmp_path), sync="batch")
    journal.open()
    for round_ in range(4):  # groups, a roll, a keys file rewritten
        jobs = make_named_jobs(2, start=2 * round_)
        journal.append_jobs(jobs, [(f"k{round_}", 1.0), ("", 0.0)])
        journal.acked(jobs)
    assert threads and loop_thread not in threads, "a sync ran on the event loop"
    journal.close()


def _record(journal: Journal, job, what: str) -> bytes:
    """A retry's LATER record (the job held an hour), or a cancel's ACK record."""
    if what == "retry":
        job.retries, job.not_before = 1, time.time() + 3600  # as Later.hold
        return journal.later_record([job])
    return journal.cancel_record([job])


@pytest.mark.parametrize("what", ["retry", "cancel"])
def test_a_retry_or_cancel_record_is_synced_with_its_group(tmp_path, monkeypatch,
                                                           what):  # fmt: skip
    """Issue 30, defect 1: a cancel and a retry's hold are answered as a 202
    is, so their records go in a group's write and, in batch mode, its sync
    (they were written after it, unsynced, or kept in memory during it)."""
    journal = Journal(str(tmp_path), sync="batch")
    journal.open()
    [job] = make_jobs(1)
    journal.append_jobs([job])
    synced = []
    monkeypatch.setattr(os, "fdatasync", lambda fd: synced.append(os.fstat(fd).st_size))
    journal.append_jobs(make_jobs(1, start=1), records=[_record(journal, job, what)])
    assert len(synced) == 1 and synced[0] == os.path.getsize(segment_files(journal)[-1])
    journal.forget([job])
    kill(journal)
    replayed = reopened_jobs(tmp_path)
    if what == "retry":
        assert replayed[job.id].not_before >= job.not_before, "runs an hour early"
    else:
        assert job.id not in replayed, "the cancelled job comes back"


# -- a group that fails or is interrupted leaves nothing to replay -----------------------


class Interrupted(BaseException):
    """Stands for a gevent.Timeout thrown while the thread pool syncs."""


@pytest.mark.parametrize("failure", [OSError(5, "Input/output error"), Interrupted()])
def test_a_group_that_fails_during_its_sync_is_never_replayed(tmp_path, monkeypatch,
                                                              failure):  # fmt: skip
    journal = Journal(str(tmp_path), sync="batch")
    journal.open()
    journal.append_jobs(make_jobs(2))

    def failing(fd: int) -> None:
        raise failure

    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises((JournalError, Interrupted)):
        journal.append_jobs(make_jobs(3, start=10))
    journal.close()
    assert reopened(tmp_path)[0] == ["c-00000", "c-00001"], "the 503s never run"


def test_a_timeout_while_the_thread_still_syncs_cuts_the_group_back(tmp_path,
                                                                    monkeypatch):  # fmt: skip
    real, release = os.fdatasync, threading.Event()

    def stalled(fd: int) -> None:
        release.wait(10)  # a disk that stalls; the thread goes on after the timeout
        real(fd)

    journal = Journal(str(tmp_path), sync="batch")
    journal.open()
    monkeypatch.setattr(os, "fdatasync", stalled)
    with pytest.raises(gevent.Timeout), gevent.Timeout(0.2):
        journal.append_jobs(make_jobs(3))
    release.set()
    assert not journal.healthy and "Timeout" in journal.last_error
    journal.close()
    assert reopened(tmp_path)[0] == []


def test_a_group_that_cannot_be_cut_back_is_cancelled(tmp_path, monkeypatch):
    journal = Journal(str(tmp_path), sync="batch")
    journal.open()

    def failing(*args) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)
    monkeypatch.setattr(os, "ftruncate", failing)
    with pytest.raises(JournalError):
        journal.append_jobs(make_jobs(2))
    monkeypatch.undo()
    journal.close()
    assert reopened(tmp_path)[0] == []


def test_a_failed_sync_rewrites_the_batch_to_a_new_segment(tmp_path, monkeypatch):
    calls = []

    def flaky(fd):
        calls.append(fd)
        if len(calls) == 1:
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", flaky)
    journal = Journal(str(tmp_path), sync="batch")
    journal.open()
    journal.append_jobs(make_named_jobs(3))
    assert len(calls) == 2 and len(segment_files(journal)) == 2
    journal.close()
    again = Journal(str(tmp_path))
    assert sorted(j.id for j in again.open().jobs) == ["t-0000", "t-0001", "t-0002"]
    again.close()


def test_a_carry_that_cannot_be_cut_back_cancels_jobs_answered_202(
    tmp_path, monkeypatch
):
    """A carry's write fails after reaching the file and cannot be cut back:
    _undo writes a CANCEL record naming the *carried* ids (still owed, answered
    202), and CANCEL settles an id in every segment at replay: the job is lost."""
    monkeypatch.setattr(compaction, "SEGMENT_ROLL", 1024)
    monkeypatch.setattr(tail, "_offload", lambda call, *args: call(*args))
    journal = Journal(str(tmp_path), sync="batch")
    journal.open()
    owed = make_jobs(1)  # answered 202, never acknowledged
    journal.append_jobs(owed)
    for round_ in range(6):  # fill segment 1 with settled jobs: it rolls
        jobs = make_jobs(4, start=100 + 4 * round_, pad=200)
        journal.append_jobs(jobs)
        journal.acked(jobs)
    assert journal._tail.size >= compaction.SEGMENT_ROLL

    def failing(*args):
        raise OSError(errno.EIO, "Input/output error")

    real_sync, real_cut = os.fdatasync, os.ftruncate
    # The next group rolls; segment 1 goes and its owed job is carried first.
    # The carry's sync fails, and so does the cut back.
    monkeypatch.setattr(os, "fdatasync", failing)
    monkeypatch.setattr(os, "ftruncate", failing)
    with pytest.raises(JournalError):
        journal.append_jobs(make_jobs(1, start=900))
    monkeypatch.setattr(os, "fdatasync", real_sync)
    monkeypatch.setattr(os, "ftruncate", real_cut)
    journal.append_jobs(make_jobs(1, start=901))  # the disk is back: the carry redone
    journal.close()  # a clean stop (kill -9 leaves the same files)
    assert reopened(tmp_path)[0] == ["c-00000", "c-00901"], "a 202 lost"


def test_a_cancelled_groups_key_does_not_come_back_naming_its_job(
    tmp_path, monkeypatch
):
    """A keyed group answered 503 whose records could not be cut back is
    cancelled (CANCEL record), but _read_slot takes keys from every JOB record,
    cancelled or not: after a restart the key names a job that never runs, and
    a client's retry with that key gets a 202 for it."""
    import time

    monkeypatch.setattr(tail, "_offload", lambda call, *args: call(*args))
    journal = Journal(str(tmp_path), sync="batch")
    journal.open()
    real_sync, real_cut = os.fdatasync, os.ftruncate

    def failing(*args):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)
    monkeypatch.setattr(os, "ftruncate", failing)
    with pytest.raises(JournalError):  # the client gets 503
        journal.append_jobs(make_jobs(1), [("order-1", time.time())])
    monkeypatch.setattr(os, "fdatasync", real_sync)
    monkeypatch.setattr(os, "ftruncate", real_cut)
    journal.close()
    again = Journal(str(tmp_path))
    replay = again.open()
    again.close()
    assert [job.id for job in replay.jobs] == [], "cancelled: not replayed (good)"
    assert "order-1" not in replay.keys, (
        f"the key names {replay.keys['order-1'][0]}, a job that never runs"
    )


def test_a_cancel_record_is_not_cut_away_by_the_next_groups_cut_back(
    tmp_path, monkeypatch
):
    """_undo's CANCEL record is written past _size (never counted in it): the
    next group's cut back (ftruncate to its start = _size) removes the CANCEL
    and keeps the 503'd group's JOB records: they run after a restart."""
    monkeypatch.setattr(tail, "_offload", lambda call, *args: call(*args))
    journal = Journal(str(tmp_path), sync="batch")
    journal.open()
    real_sync, real_cut = os.fdatasync, os.ftruncate
    syncs = {"n": 0}

    def failing(*args):
        raise OSError(errno.EIO, "Input/output error")

    def first_sync_fails(fd):  # G2's sync fails once; its rewrite syncs fine
        syncs["n"] += 1
        if syncs["n"] == 1:
            raise OSError(errno.EIO, "Input/output error")
        real_sync(fd)

    monkeypatch.setattr(os, "fdatasync", failing)
    monkeypatch.setattr(os, "ftruncate", failing)
    with pytest.raises(JournalError):  # G1: 503, cancelled (cut back failed)
        journal.append_jobs(make_jobs(1))
    monkeypatch.setattr(os, "ftruncate", real_cut)  # a transient EIO is over
    monkeypatch.setattr(os, "fdatasync", first_sync_fails)
    journal.append_jobs(make_jobs(1, start=10))  # G2: rewritten to a new segment, 202
    monkeypatch.setattr(os, "fdatasync", real_sync)
    journal.close()
    assert reopened(tmp_path)[0] == ["c-00010"], "G1 was answered 503"


# -- records written outside a group -----------------------------------------------------


def test_a_short_ack_write_makes_the_segment_damaged(tmp_path, monkeypatch):
    """flush_acks does not check os.write's count: a short write (disk nearly
    full) leaves a torn ACK record inside the segment, and _size past the file's
    end; the next group lands after it, so the next start finds *damage*
    (refused with JOURNAL_CORRUPT=refuse) though nothing was damaged."""
    journal = Journal(str(tmp_path))
    journal.open()
    first = make_jobs(2)
    journal.append_jobs(first)
    journal.acked(first[:1])
    real = os.write

    def short(fd, data):
        return real(fd, bytes(data)[: len(data) // 2])  # ENOSPC part-way

    monkeypatch.setattr(os, "write", short)
    journal.flush_acks()  # no error reported
    monkeypatch.undo()
    journal.append_jobs(make_jobs(1, start=10))  # space again: the next group
    journal.close()
    # At worst a lost ACK (one duplicate), never damage; the ACK is written again.
    replayed = reopened(tmp_path, corrupt="refuse")[0]
    assert replayed in (["c-00001", "c-00010"], ["c-00000", "c-00001", "c-00010"])


@pytest.mark.parametrize("what", ["retry", "cancel"])
def test_a_retry_or_cancel_whose_write_fails_is_refused_and_leaves_nothing(
    tmp_path, monkeypatch, what
):
    """Issue 30, defect 2: a record that cannot be written raises (the cancel
    answers 503, the retry is written again later) and leaves nothing of
    itself; the job stays owed as it was. A full disk for one write."""
    journal = Journal(str(tmp_path))
    journal.open()
    [job] = make_jobs(1)
    journal.append_jobs([job])
    real_write = os.write

    def full(fd, data):
        raise OSError(28, "No space left on device")

    data = _record(journal, job, what)
    monkeypatch.setattr(os, "write", full)
    with pytest.raises(JournalError, match="1 records"):
        journal.append_jobs([], records=[data])
    monkeypatch.setattr(os, "write", real_write)
    journal.close()
    replayed = reopened_jobs(tmp_path)
    assert replayed[job.id].not_before == 0, "a record refused was kept"
