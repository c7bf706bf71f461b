"""Jobs that wait, in the journal and the timer: the cases a review of issue 20
found (each test failed before its fix; its docstring tells the defect).
"""

from __future__ import annotations

import contextlib
import math
import os
import time

import gevent
import pytest

from greenpipe.jobs import Envelope
from greenpipe.journal import Journal, JournalError, compaction, tail
from greenpipe.journal.segments import decode_later, encode_later
from tests.test_journal_cases import _jobs


def _kill(journal: Journal) -> None:
    """kill -9: the descriptors go, nothing kept in memory is written."""
    for fd in (journal._tail.fd, journal._lock_fd):
        if fd >= 0:
            os.close(fd)
    journal._tail.fd = journal._lock_fd = -1


def _reopen(directory) -> dict[str, Envelope]:
    journal = Journal(str(directory))
    jobs = {job.id: job for job in journal.open().jobs}
    journal.close()
    return jobs


# -- 1. LATER times: "rounded up, never earlier" is not always so -------------------


def test_a_later_time_read_back_is_never_earlier_than_the_jobs_time():
    """ceil(x * 1000) / 1000 rounds the *product*, which float arithmetic may
    have rounded down onto a whole millisecond: read back, the time is then one
    ulp (~0.24 us) earlier than the job's own. test_journal_crash's check is
    strict (`job.not_before < waiting`): such a time fails it."""
    job = _jobs(1)[0]
    base = int(time.time() * 1000) + 3_600_000
    early = []
    for k in range(base, base + 2_000):
        job.not_before = math.nextafter(k / 1000, math.inf)
        ((_, read_back, _, _),) = decode_later(encode_later([job]))
        if read_back < job.not_before:
            early.append((repr(job.not_before), repr(read_back)))
    assert not early, f"{len(early)} of 2,000 read back earlier, e.g. {early[:2]}"


# -- 2. the roll floor stays where the waiting jobs once put it ---------------------


def test_the_roll_floor_falls_once_the_waiting_jobs_are_gone(tmp_path, monkeypatch):
    """`_roll_floor` is recomputed only when the current segment reaches it:
    once 100 KiB of waiting jobs have run (or been cancelled), the journal still
    grows to 4x that before it rolls, with nothing owed at all."""
    monkeypatch.setattr(compaction, "SEGMENT_ROLL", 4096)
    journal = Journal(str(tmp_path))
    journal.open()
    waiting = _jobs(400, start=500_000, pad=100)
    for job in waiting:
        job.not_before = time.time() + 3600
    for i in range(0, len(waiting), 10):
        journal.append_jobs(waiting[i : i + 10])
    for round_ in range(60):  # ordinary load until a roll sets the floor
        jobs = _jobs(4, start=4 * round_, pad=600)
        journal.append_jobs(jobs)
        journal.acked(jobs)
    floor = journal._compaction.roll_floor
    assert floor > 100_000, floor
    journal.acked(waiting)  # they ran (or were cancelled): nothing waits now
    sizes = []
    for round_ in range(60, 160):  # ~250 KiB more of ordinary, acknowledged load
        jobs = _jobs(4, start=4 * round_, pad=600)
        journal.append_jobs(jobs)
        journal.acked(jobs)
        sizes.append(journal.size())
    journal.close()
    bound = 3 * 4096 + 4096  # nothing owed: a few segments' worth, as the crash test
    assert max(sizes) <= bound, (
        f"nothing owed, yet the journal grew to {max(sizes)} bytes (SEGMENT_ROLL "
        f"4096): the floor stayed at {floor} after the waiting jobs were gone"
    )


# -- 3. a carry of every waiting job in one group commit ---------------------------


def test_a_big_carry_is_spread_over_groups_so_none_is_refused_for_good(tmp_path,
                                                                   monkeypatch):  # fmt: skip
    """All the waiting jobs are carried in the one group that rolls, written and
    (batch) synced inside that group's COMMIT_TIMEOUT. On a disk that syncs W
    bytes slower than that, the timeout cuts the carry back and the group gets
    503s; the next group tries the same carry, and so on: the web refuses every
    job for good (before issue 20, a carry was at most a quarter of a segment).
    Here: a disk syncing 2 MB/s, a 0.25 s timeout (5 s and 1 GiB scaled down),
    1 MB of jobs due in an hour."""
    monkeypatch.setattr(compaction, "SEGMENT_ROLL", 64 << 10)
    synced: dict[int, int] = {}
    real = os.fdatasync

    def slow_disk(fd: int) -> None:  # 2 MB/s for what was written since last sync
        size = os.fstat(fd).st_size
        time.sleep(max(0, size - synced.get(fd, 0)) / 2e6)  # sleep-ok: the disk
        # (a sync given up on may end after the journal closed its file)
        with contextlib.suppress(OSError):
            real(fd)  # what was cut back meanwhile is not synced: written again
            synced[fd] = min(size, os.fstat(fd).st_size)

    real_cut = os.ftruncate

    def cut(fd: int, size: int) -> None:
        real_cut(fd, size)
        synced[fd] = min(synced.get(fd, 0), size)

    journal = Journal(str(tmp_path), sync="batch")
    journal.open()
    monkeypatch.setattr(os, "fdatasync", slow_disk)
    monkeypatch.setattr(os, "ftruncate", cut)
    waiting = _jobs(1000, start=500_000, pad=900)  # ~1 MB, in groups of 10
    for job in waiting:
        job.not_before = time.time() + 3600
    for i in range(0, len(waiting), 10):
        with gevent.Timeout(0.25):
            journal.append_jobs(waiting[i : i + 10])
    refused = accepted = 0
    for round_ in range(3000):  # ordinary, acknowledged jobs, past the roll (4 MB)
        jobs = _jobs(2, start=2 * round_, pad=1000)
        try:
            with gevent.Timeout(0.25, JournalError("stalled")):
                journal.append_jobs(jobs)
        except JournalError:
            refused += 1
            if refused >= 5:
                break
            continue
        accepted += 1
        journal.acked(jobs)
    journal.close()
    assert refused < 5, (
        f"after {accepted} groups written, {refused} groups in a row refused: each "
        f"tries to carry {len(waiting)} waiting jobs (~1 MB) within the timeout"
    )


# -- 4. a retry's LATER record (or a cancel) kept in memory past its group ----------


@pytest.mark.parametrize("what", ["retry", "cancel"])
def test_a_retry_or_cancel_during_a_group_sync_is_on_disk_when_the_group_is(
    tmp_path, monkeypatch, what
):
    """`Journal.later` and `Journal.cancelled` write at once, "unless a group is
    being written, which carries it". The group does not: its ACK records were
    taken before its write. The record waits in memory for the next group or
    heartbeat; a kill -9 meanwhile runs the retry at once (before its backoff)
    or runs the cancelled job. In batch mode, settlement runs while the group
    commit's greenlet waits for the thread pool's fdatasync."""
    journal = Journal(str(tmp_path), sync="batch")
    journal.open()
    [job] = _jobs(1)
    journal.append_jobs([job])
    real = tail._offload

    def meanwhile(call, *args):  # what the link's greenlet does during the sync
        if job.not_before == 0 and not job.retries and what == "retry":
            job.retries, job.not_before = 1, time.time() + 3600  # Later.hold
            journal.later([job])
        elif what == "cancel" and job.segment >= 0:
            journal.cancelled([job])
            job.segment = -2  # once
        return real(call, *args)

    monkeypatch.setattr(tail, "_offload", meanwhile)
    journal.append_jobs(_jobs(1, start=1))  # the group; its 202 is sent now
    monkeypatch.setattr(tail, "_offload", real)
    _kill(journal)  # a moment later, before any heartbeat
    replayed = _reopen(tmp_path)
    if what == "retry":
        assert replayed[job.id].not_before >= job.not_before, (
            f"the retry comes back due at {replayed[job.id].not_before}: runs at "
            "once, an hour early"
        )
    else:
        assert job.id not in replayed, "the job cancelled (and told so) comes back"


# -- 5. the dispatcher spins while the start's barrier hold keeps a due job --------


def test_the_dispatcher_does_not_spin_while_the_barrier_hold_keeps_a_due_job(
    tmp_path,
):
    """Until the barrier is met (READY_TIMEOUT after start at most), `flush`
    returns before `queues.due`, but `_run` sleeps until `later.next_due()`,
    which is past: it waits 0 s and loops, 100% of a core, for up to
    READY_TIMEOUT (10 s), while the workers it waits for start beside it.
    A web restarted with a retry or a delayed job due in its first seconds."""
    from tests.test_core import make

    folder = tmp_path / "journal"
    journal = Journal(str(folder))
    journal.open()
    [job] = _jobs(1)
    job.not_before = time.time() + 0.05  # due just after the restart
    journal.append_jobs([job])
    journal.close()
    d = make(time.monotonic, workers="127.0.0.1:1", journal_dir=folder)
    calls = 0
    real = d.flush

    def counting() -> None:
        nonlocal calls
        calls += 1
        real()

    d.flush = counting  # type: ignore[method-assign]
    d.start()  # no worker ever says READY: the hold lasts READY_TIMEOUT
    try:
        assert len(d.later) == 1
        gevent.sleep(0.5)  # sleep-ok: measuring what the dispatcher does meanwhile
    finally:
        d.close()
    assert calls < 20, f"{calls} flushes in 0.5 s: the dispatcher spins"


# -- 6. a LATER record (or a cancel) whose write fails is dropped ------------------


@pytest.mark.parametrize("what", ["retry", "cancel"])
def test_a_retry_or_cancel_whose_write_fails_is_written_again(tmp_path, monkeypatch,
                                                              what):  # fmt: skip
    """`flush_acks` drops the records it could not write ("only duplicates at a
    replay"): true of ACKs of finished jobs, not of a retry's LATER record (the
    job then comes back due at once: early) nor of a cancel (the cancelled job
    comes back). A full disk for one write is enough; the disk has room again
    for the heartbeat's flush and the close."""
    journal = Journal(str(tmp_path))
    journal.open()
    [job] = _jobs(1)
    journal.append_jobs([job])
    real_write, failed = os.write, []

    def full_once(fd, data):
        if not failed:
            failed.append(fd)
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_once)
    if what == "retry":
        job.retries, job.not_before = 1, time.time() + 3600  # Later.hold
        journal.later([job])
    else:
        journal.cancelled([job])
    assert failed
    journal.flush_acks()  # the next heartbeat: room again
    monkeypatch.setattr(os, "write", real_write)
    journal.close()
    replayed = _reopen(tmp_path)
    if what == "retry":
        assert replayed[job.id].not_before >= job.not_before, "runs an hour early"
    else:
        assert job.id not in replayed, "the cancelled job comes back"


# -- 7. crash points with waiting jobs that come due, are cancelled, are carried ----


@pytest.mark.parametrize("sync", ["none", "batch"])
def test_crash_points_with_waiting_jobs_cancelled_and_coming_due(tmp_path, monkeypatch,
                                                                 sync):  # fmt: skip
    """test_journal_crash's workload, but its waiting jobs also come due (some
    wait 2 ms) and are acknowledged, and some are cancelled while they wait: at
    every crash point, each comes back once with its time, or not at all if its
    ACK reached the disk."""
    from tests import test_journal_crash as crash

    class Run(crash.Run):
        def work(self, steps: int) -> None:
            rng = self.rng
            journal = Journal(str(self.root), self.sync, keys=lambda: dict(self.keys))
            owed = {job.id: job for job in journal.open().jobs}
            for _ in range(steps):
                event = rng.random()
                if event < 0.5:
                    jobs = [self._next() for _ in range(rng.randrange(1, 4))]
                    for job in jobs:
                        if rng.random() < 0.4:
                            job.not_before = time.time() + rng.choice((0.002, 3600))
                    if self.push(journal, jobs):
                        owed.update((job.id, job) for job in jobs)
                elif event < 0.75 and owed:
                    due = [j for j in owed.values() if j.not_before <= time.time()]
                    if due:
                        done = rng.sample(due, rng.randrange(1, len(due) + 1))
                        journal.acked(done)
                        for job in done:
                            del owed[job.id]
                            self.acked.add(job.id)
                elif event < 0.85 and owed:
                    waits = [j for j in owed.values() if j.not_before > time.time()]
                    if waits:
                        job = rng.choice(waits)
                        del owed[job.id]
                        self.acked.add(job.id)  # in doubt if the crash comes now
                        journal.cancelled([job])
                else:
                    journal.flush_acks()
            journal.close()

    points = crash.crash_everywhere(tmp_path, monkeypatch, sync, range(7, 8), 150, Run)
    assert points > 100, points
