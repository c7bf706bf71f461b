"""Issue 24's journal cases, each in one process against a real `Journal` on a
temporary directory (the fast tier). Case numbers are the issue's.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import gevent
import pytest

from greenpipe.jobs import Envelope
from greenpipe.journal import Journal, JournalError, compaction

NO_KEY = ("", 0.0)


class Interrupted(BaseException):
    """Stands for a gevent.Timeout thrown while the thread pool syncs."""


def _jobs(count: int, start: int = 0, pad: int = 0) -> list[Envelope]:
    jobs = []
    for i in range(start, start + count):
        job = Envelope(f"c-{i:05d}", b"POST", b"/jobs", b"", b"application/json",
                       b'{"n": %d}' % i + b" " * pad)  # fmt: skip
        job.attempt = 1
        jobs.append(job)
    return jobs


def _replayed(directory: Path, **kwargs) -> tuple[list[str], dict]:
    journal = Journal(str(directory), **kwargs)
    replay = journal.open()
    journal.close()
    return sorted(job.id for job in replay.jobs), replay.keys


def _segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("slot-*/seg-*.log"))


# -- 3: a group that fails or is interrupted leaves nothing to replay -----------


@pytest.mark.parametrize("failure", [OSError(5, "Input/output error"), Interrupted()])
def test_a_group_that_fails_during_its_sync_is_never_replayed(tmp_path, monkeypatch,
                                                              failure):  # fmt: skip
    journal = Journal(str(tmp_path), sync="batch")
    journal.open()
    journal.append_jobs(_jobs(2))

    def failing(fd: int) -> None:
        raise failure

    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises((JournalError, Interrupted)):
        journal.append_jobs(_jobs(3, start=10))
    journal.close()
    assert _replayed(tmp_path)[0] == ["c-00000", "c-00001"], "the 503s never run"


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
        journal.append_jobs(_jobs(3))
    release.set()
    assert not journal.healthy and "Timeout" in journal.last_error
    journal.close()
    assert _replayed(tmp_path)[0] == []


def test_a_group_that_cannot_be_cut_back_is_cancelled(tmp_path, monkeypatch):
    journal = Journal(str(tmp_path), sync="batch")
    journal.open()

    def failing(*args) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)
    monkeypatch.setattr(os, "ftruncate", failing)
    with pytest.raises(JournalError):
        journal.append_jobs(_jobs(2))
    monkeypatch.undo()
    journal.close()
    assert _replayed(tmp_path)[0] == []


# -- 5: an ACK outlives nothing it settles ---------------------------------------


def test_an_acknowledged_replayed_job_is_not_replayed_again(tmp_path, monkeypatch):
    monkeypatch.setattr(compaction, "SEGMENT_ROLL", 1024)
    first = Journal(str(tmp_path))
    first.open()
    first.append_jobs(_jobs(2))
    first.close()
    journal = Journal(str(tmp_path))
    done, owed = sorted(journal.open().jobs, key=lambda job: job.id)
    journal.acked([done])  # its ACK goes to a newer segment
    for round_ in range(10):  # which fills, rolls and drains
        jobs = _jobs(4, start=100 + 4 * round_, pad=200)
        journal.append_jobs(jobs)
        journal.acked(jobs)
    journal.close()
    assert _replayed(tmp_path)[0] == [owed.id], "the acknowledged one stays done"


# -- 6, 7: adoption ---------------------------------------------------------------


class Crash(BaseException):
    """Stands for a kill -9 at that point."""


def _orphan(directory: Path, jobs: list[Envelope], keys=None) -> None:
    alive, dying = Journal(str(directory)), Journal(str(directory))
    alive.open()
    dying.open()
    dying.append_jobs(jobs, keys)
    dying.close()
    alive.close()


def test_a_crash_during_adoption_replays_each_job_once(tmp_path, monkeypatch):
    _orphan(tmp_path, _jobs(3))

    def crash(path: str) -> None:
        raise Crash(path)

    heir = Journal(str(tmp_path))
    monkeypatch.setattr(os, "unlink", crash)
    with pytest.raises(Crash):  # after the copy, before the orphan's files go
        heir.open()
    monkeypatch.undo()
    os.close(heir._tail.fd)
    os.close(heir._lock_fd)
    for fd in range(3, 256):  # the orphan's lock, as kill -9 would drop it
        try:
            os.fstat(fd)
        except OSError:
            continue
        if os.readlink(f"/proc/self/fd/{fd}").endswith("slot-1.lock"):
            os.close(fd)
    journal = Journal(str(tmp_path))
    replay = journal.open()
    ids = [job.id for job in replay.jobs]
    assert sorted(ids) == ["c-00000", "c-00001", "c-00002"], "once each"
    journal.acked(replay.jobs)
    journal.append_jobs(_jobs(1, start=9))
    journal.acked(_jobs(1, start=9))
    journal.append_jobs(_jobs(1, start=10))  # compaction: nothing older stays
    assert len(_segments(tmp_path)) == 1, _segments(tmp_path)
    journal.close()


def test_adopted_jobs_keep_their_keys(tmp_path):
    _orphan(tmp_path, _jobs(2), [("order-1", 1000.0), ("order-2", 2000.0)])
    heir = Journal(str(tmp_path))
    assert heir.open().adopted == [1]
    heir.close()  # (a crash here, before any compaction of the heir's)
    assert _replayed(tmp_path)[1] == {
        "order-1": ("c-00000", 1000.0),
        "order-2": ("c-00001", 2000.0),
    }


# -- 8, 9, 10: keys -------------------------------------------------------------------


KEYS = ["line\nbreak", "é ü", "trailing space ", "x" * 300, "\udcff", "a b 1.0"]


def test_keys_round_trip_with_their_own_time(tmp_path, monkeypatch):
    monkeypatch.setattr(compaction, "SEGMENT_ROLL", 256)
    live: dict[str, tuple[str, float]] = {}
    journal = Journal(str(tmp_path), keys=lambda: live)
    journal.open()
    for i, key in enumerate(KEYS):
        (job,) = _jobs(1, start=i)
        at = 1000.0 + i
        journal.append_jobs([job], [(key, at)])
        live[key] = (job.id, at)
        journal.acked([job])
    journal.close()
    keys = _replayed(tmp_path)[1]
    assert keys == {key: (f"c-{i:05d}", 1000.0 + i) for i, key in enumerate(KEYS)}
    assert len(_segments(tmp_path)) < len(KEYS), "read back from the keys file too"


def test_many_live_keys_cost_nothing_per_acknowledgement(tmp_path, monkeypatch):
    monkeypatch.setattr(compaction, "SEGMENT_ROLL", 64 << 10)
    live = {f"key-{i}": (f"c-{i:05d}", 1000.0) for i in range(5000)}
    journal = Journal(str(tmp_path), keys=lambda: live)
    journal.open()
    written = []
    real = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: written.append(len(data))
                        or real(fd, data))  # fmt: skip
    for round_ in range(20):  # light load: one job at a time, acknowledged
        jobs = _jobs(1, start=round_)
        journal.append_jobs(jobs)
        journal.acked(jobs)
        journal.flush_acks()
    assert sum(written) < 8 << 10, f"{sum(written)} bytes written for 20 small jobs"
    journal.close()


# -- 11, 12: compaction ---------------------------------------------------------------


def test_one_job_always_in_flight_does_not_keep_the_history(tmp_path, monkeypatch):
    monkeypatch.setattr(compaction, "SEGMENT_ROLL", 1024)
    journal = Journal(str(tmp_path))
    journal.open()
    in_flight: list[Envelope] = []
    for round_ in range(300):
        jobs = _jobs(5, start=5 * round_, pad=20)
        journal.append_jobs(jobs)
        journal.acked(in_flight + jobs[1:])  # the newest first job stays owed
        in_flight = jobs[:1]
    assert journal.size() < 4 * 1024, journal.size()
    journal.close()
    assert _replayed(tmp_path)[0] == [in_flight[0].id]


def test_clean_restarts_leave_no_segment_behind(tmp_path):
    for restart in range(6):
        journal = Journal(str(tmp_path))
        journal.open()
        jobs = _jobs(1, start=restart)
        journal.append_jobs(jobs)
        journal.acked(jobs)
        journal.close()
    assert len(_segments(tmp_path)) <= 2, _segments(tmp_path)


# -- 13: damage and a torn tail in one segment ------------------------------------------


def _damaged_and_torn(directory: Path) -> None:
    journal = Journal(str(directory))
    journal.open()
    for i in range(5):
        journal.append_jobs(_jobs(1, start=i))
    journal.close()
    (segment,) = _segments(directory)
    data = bytearray(segment.read_bytes())
    one = len(data) // 5
    data[one + one // 2] ^= 0xFF  # a bit flip inside the second record
    segment.write_bytes(bytes(data[:-5]))  # and the last one torn


def test_damage_before_valid_records_is_damage_even_with_a_torn_tail(tmp_path):
    _damaged_and_torn(tmp_path)
    ids, _ = _replayed(tmp_path)
    assert ids == ["c-00000", "c-00002", "c-00003"], "the intact records salvaged"
    assert list(tmp_path.glob("slot-0/*.damaged-*")), "the damaged file kept aside"


def test_damage_with_a_torn_tail_can_refuse_to_start(tmp_path):
    _damaged_and_torn(tmp_path)
    with pytest.raises(JournalError, match="JOURNAL_CORRUPT=salvage"):
        Journal(str(tmp_path), corrupt="refuse").open()


# -- issue 20: jobs due in an hour do not pin compaction ----------------------------


def test_jobs_waiting_for_an_hour_do_not_pin_the_segments_written_meanwhile(
    tmp_path, monkeypatch
):
    import time

    monkeypatch.setattr(compaction, "SEGMENT_ROLL", 4096)
    journal = Journal(str(tmp_path))
    journal.open()
    waiting = _jobs(40, start=90_000)
    for job in waiting:
        job.not_before = time.time() + 3600
    journal.append_jobs(waiting)
    waiting_bytes = sum(entry.size for segment in journal._tail.segments.values()
                        for entry in segment.owed.values())  # fmt: skip
    sizes = []
    for round_ in range(400):  # a steady load, each job acknowledged: ~1 MiB
        jobs = _jobs(4, start=4 * round_, pad=600)
        journal.append_jobs(jobs)
        journal.acked(jobs)
        sizes.append(journal.size())
    bound = 2 * max(4096, 4 * waiting_bytes) + 4 * waiting_bytes + 8192
    assert max(sizes[100:]) <= bound, (
        f"the journal grew to {max(sizes)} bytes with {waiting_bytes} bytes of "
        f"waiting jobs (bound {bound}): waiting jobs pin compaction"
    )
    written = journal.bytes_written
    assert journal.carried * 4 <= written, "carrying them costs more than a quarter"
    journal.close()
    replayed = Journal(str(tmp_path))
    jobs = replayed.open().jobs
    replayed.close()
    assert sorted(job.id for job in jobs) == sorted(job.id for job in waiting)
    by_id = {job.id: job.not_before for job in waiting}
    early = [job.id for job in jobs if job.not_before < by_id[job.id]]
    assert not early, f"due times read back earlier than written: {early}"
    assert all(job.not_before - by_id[job.id] < 0.001 for job in jobs), "kept to 1 ms"
