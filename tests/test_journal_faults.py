"""The journal under disk faults and crashes found by a review (issue 24): each
was a failing reproduction first. A real `Journal` on tmp_path, one process."""

from __future__ import annotations

import errno
import os

import pytest

from greenpipe.journal import Journal, JournalError, compaction, tail
from tests.test_journal_cases import _jobs


def _replayed(directory, **kwargs) -> list[str]:
    journal = Journal(str(directory), **kwargs)
    replay = journal.open()
    journal.close()
    return sorted(job.id for job in replay.jobs)


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
    owed = _jobs(1)  # answered 202, never acknowledged
    journal.append_jobs(owed)
    for round_ in range(6):  # fill segment 1 with settled jobs: it rolls
        jobs = _jobs(4, start=100 + 4 * round_, pad=200)
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
        journal.append_jobs(_jobs(1, start=900))
    monkeypatch.setattr(os, "fdatasync", real_sync)
    monkeypatch.setattr(os, "ftruncate", real_cut)
    journal.append_jobs(_jobs(1, start=901))  # the disk is back: the carry redone
    journal.close()  # a clean stop (kill -9 leaves the same files)
    assert _replayed(tmp_path) == ["c-00000", "c-00901"], "a 202 lost"


def test_a_short_ack_write_makes_the_segment_damaged(tmp_path, monkeypatch):
    """flush_acks does not check os.write's count: a short write (disk nearly
    full) leaves a torn ACK record inside the segment, and _size past the file's
    end; the next group lands after it, so the next start finds *damage*
    (refused with JOURNAL_CORRUPT=refuse) though nothing was damaged."""
    journal = Journal(str(tmp_path))
    journal.open()
    first = _jobs(2)
    journal.append_jobs(first)
    journal.acked(first[:1])
    real = os.write

    def short(fd, data):
        return real(fd, bytes(data)[: len(data) // 2])  # ENOSPC part-way

    monkeypatch.setattr(os, "write", short)
    journal.flush_acks()  # no error reported
    monkeypatch.undo()
    journal.append_jobs(_jobs(1, start=10))  # space again: the next group
    journal.close()
    # At worst a lost ACK (one duplicate), never damage; the ACK is written again.
    replayed = _replayed(tmp_path, corrupt="refuse")
    assert replayed in (["c-00001", "c-00010"], ["c-00000", "c-00001", "c-00010"])


class Crash(BaseException):
    """Stands for a kill -9 at that point."""


def test_a_crash_during_adoption_then_two_webs_starting_together_run_jobs_twice(
    tmp_path, monkeypatch
):
    """The heir carries the orphan's jobs into its slot, then is killed before
    the orphan's files go (the case the docstring says replay deduplicates).
    Two web processes then start together (WEB_PROCESSES, or honcho after a
    crash): one takes slot 0 (the copies), the other slot 1 (the originals) as
    its *own* slot; neither sees the other's as an orphan, so both replay the
    same ids."""
    import fcntl

    dying = Journal(str(tmp_path))
    blocker = Journal(str(tmp_path))
    blocker.open()  # slot 0 busy: the dying one gets slot 1
    dying.open()
    jobs = _jobs(3)
    dying.append_jobs(jobs)
    dying.close()
    blocker.close()

    heir = Journal(str(tmp_path))

    def killed(folder):
        raise Crash("kill -9 between the carry and the orphan's removal")

    monkeypatch.setattr(heir._slots, "remove_slot", killed)
    with pytest.raises(Crash):
        heir.open()  # takes slot 0, copies slot 1's jobs into it
    for name in os.listdir("/proc/self/fd"):  # the kernel drops them on kill -9
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith(str(tmp_path)):
            os.close(int(name))

    # Two webs start at once: the first holds slot 0's lock while the second
    # looks for a free slot, so the second takes slot 1 as its own.
    path = tmp_path / "slot-0.lock"
    first_lock = os.open(path, os.O_RDWR)
    fcntl.flock(first_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    second = Journal(str(tmp_path))
    second_ids = sorted(job.id for job in second.open().jobs)
    assert second.slot == 1
    os.close(first_lock)  # the first web's open() goes on, now holding slot 0
    first = Journal(str(tmp_path))
    first_ids = sorted(job.id for job in first.open().jobs)
    assert first.slot == 0
    first.close()
    second.close()
    twice = set(first_ids) & set(second_ids)
    assert not twice, f"replayed by both webs: {sorted(twice)}"


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
        journal.append_jobs(_jobs(1), [("order-1", time.time())])
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
        journal.append_jobs(_jobs(1))
    monkeypatch.setattr(os, "ftruncate", real_cut)  # a transient EIO is over
    monkeypatch.setattr(os, "fdatasync", first_sync_fails)
    journal.append_jobs(_jobs(1, start=10))  # G2: rewritten to a new segment, 202
    monkeypatch.setattr(os, "fdatasync", real_sync)
    journal.close()
    assert _replayed(tmp_path) == ["c-00010"], "G1 was answered 503"
