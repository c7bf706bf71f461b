"""What a journal gives back when it is opened again: the jobs owed, whole,
with their keys, attempts and due times; a torn tail cut off, damage salvaged
or refused. A real `Journal` on tmp_path, one process.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import gevent
import pytest

from greenpipe.journal import (
    JOB,
    Journal,
    JournalError,
    compaction,
    encode_job,
    record,
)
from greenpipe.journal.segments import (
    JOB_ON,
    decode_job,
    decode_later,
    decode_segment,
    encode_later,
)
from tests.journal_support import (
    make_jobs,
    make_named_jobs,
    reopened,
    segment_files,
    segment_paths,
)

pytestmark = pytest.mark.inprocess  # make test-fast

# -- jobs and keys replayed --------------------------------------------------------------


def test_jobs_not_acknowledged_are_replayed_whole(tmp_path):
    first = Journal(str(tmp_path))
    assert first.open().jobs == []
    jobs = make_named_jobs(4)
    first.append_jobs(jobs, [("key-0", 1.0), ("", 0.0), ("", 0.0), ("", 0.0)])
    first.acked(jobs[1:2])
    first.close()
    again = Journal(str(tmp_path))
    replay = again.open()
    got = {job.id: job for job in replay.jobs}
    assert sorted(got) == ["t-0000", "t-0002", "t-0003"]
    job = got["t-0003"]
    assert (job.method, job.path, job.query, job.content_type, job.body, job.name) == (
        b"POST",
        b"/jobs",
        b"a=1",
        b"application/json",
        b'{"n": 3}',
        b"welcome",
    )
    assert job.attempt == 1 and got["t-0002"].name == b""
    assert replay.keys["key-0"][0] == "t-0000"
    again.close()


def test_a_jobs_queue_is_replayed_and_a_default_one_is_written_as_before(tmp_path):
    """A job of a named queue is a JOB_ON record; one of the default queue
    stays a JOB record, byte for byte as before queues (an older greenpipe
    reads that journal)."""
    first = Journal(str(tmp_path))
    first.open()
    jobs = make_named_jobs(3)
    jobs[1].queue = b"reports"
    first.append_jobs(jobs, [("", 0.0)] * 3)
    first.close()
    kinds = [kind for path in segment_paths(tmp_path)
             for kind, _ in decode_segment(path.read_bytes())[0]]  # fmt: skip
    assert kinds.count(JOB_ON) == 1 and kinds.count(JOB) == 2, kinds
    default = record(JOB, encode_job(jobs[0]))
    assert any(default in path.read_bytes() for path in segment_paths(tmp_path))
    again = Journal(str(tmp_path))
    got = {job.id: job for job in again.open().jobs}
    assert [got[job.id].queue for job in jobs] == [b"default", b"reports", b"default"]
    assert got[jobs[1].id].name == jobs[1].name and got[jobs[1].id].body == jobs[1].body
    again.close()
    with pytest.raises(IndexError, match="cut short"):
        decode_job(JOB_ON, b"\x09rep")


def test_an_acknowledged_replayed_job_is_not_replayed_again(tmp_path, monkeypatch):
    monkeypatch.setattr(compaction, "SEGMENT_ROLL", 1024)
    first = Journal(str(tmp_path))
    first.open()
    first.append_jobs(make_jobs(2))
    first.close()
    journal = Journal(str(tmp_path))
    done, owed = sorted(journal.open().jobs, key=lambda job: job.id)
    journal.acked([done])  # its ACK goes to a newer segment
    for round_ in range(10):  # which fills, rolls and drains
        jobs = make_jobs(4, start=100 + 4 * round_, pad=200)
        journal.append_jobs(jobs)
        journal.acked(jobs)
    journal.close()
    assert reopened(tmp_path)[0] == [owed.id], "the acknowledged one stays done"


KEYS = ["line\nbreak", "é ü", "trailing space ", "x" * 300, "\udcff", "a b 1.0"]


def test_keys_round_trip_with_their_own_time(tmp_path, monkeypatch):
    monkeypatch.setattr(compaction, "SEGMENT_ROLL", 256)
    live: dict[str, tuple[str, float]] = {}
    journal = Journal(str(tmp_path), keys=lambda: live)
    journal.open()
    for i, key in enumerate(KEYS):
        (job,) = make_jobs(1, start=i)
        at = 1000.0 + i
        journal.append_jobs([job], [(key, at)])
        live[key] = (job.id, at)
        journal.acked([job])
    journal.close()
    keys = reopened(tmp_path)[1]
    assert keys == {key: (f"c-{i:05d}", 1000.0 + i) for i, key in enumerate(KEYS)}
    assert len(segment_paths(tmp_path)) < len(KEYS), "read back from the keys file too"


def test_a_later_time_read_back_is_never_earlier_than_the_jobs_time():
    """ceil(x * 1000) / 1000 rounds the *product*, which float arithmetic may
    have rounded down onto a whole millisecond: read back, the time is then one
    ulp (~0.24 us) earlier than the job's own. test_journal_crash_points' check is
    strict (`job.not_before < waiting`): such a time fails it."""
    job = make_jobs(1)[0]
    base = int(time.time() * 1000) + 3_600_000
    early = []
    for k in range(base, base + 2_000):
        job.not_before = math.nextafter(k / 1000, math.inf)
        ((_, read_back, _, _),) = decode_later(encode_later([job]))
        if read_back < job.not_before:
            early.append((repr(job.not_before), repr(read_back)))
    assert not early, f"{len(early)} of 2,000 read back earlier, e.g. {early[:2]}"


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
    [job] = make_jobs(1)
    # Due just after the restart: late enough to be replayed as waiting even on
    # a busy machine (0.05 s was not, once), early enough to come due in the
    # time watched below.
    job.not_before = time.time() + 1.0
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
        gevent.sleep(2.0)  # sleep-ok: measuring what the dispatcher does meanwhile
    finally:
        d.close()
    assert calls < 20, f"{calls} flushes in 2 s: the dispatcher spins"


# -- torn tails and damage ---------------------------------------------------------------


def test_a_torn_tail_is_cut_off_and_the_good_records_replayed(tmp_path, caplog):
    journal = Journal(str(tmp_path))
    journal.open()
    journal.append_jobs(make_named_jobs(3))
    journal.close()
    (segment,) = segment_files(journal)
    size = segment.stat().st_size
    with open(segment, "r+b") as file:
        file.truncate(size - 5)  # the last record cut in the middle of its body
    again = Journal(str(tmp_path))
    replay = again.open()
    assert [job.id for job in replay.jobs] == ["t-0000", "t-0001"]
    assert replay.torn == 1 and "torn record" in caplog.text
    assert segment.stat().st_size < size - 5, "the torn bytes are gone"
    again.close()


def _damage_middle_record(journal: Journal) -> Path:
    (segment,) = segment_files(journal)
    data = bytearray(segment.read_bytes())
    one = len(data) // 3
    data[one + one // 2] ^= 0xFF  # a bit flip inside the second record
    segment.write_bytes(bytes(data))
    return segment


def test_damage_followed_by_good_records_is_salvaged_and_moved_aside(tmp_path, caplog):
    journal = Journal(str(tmp_path))
    journal.open()
    journal.append_jobs(make_named_jobs(3))
    journal.close()
    segment = _damage_middle_record(journal)
    again = Journal(str(tmp_path))
    replay = again.open()
    assert [job.id for job in replay.jobs] == ["t-0000", "t-0002"]
    assert replay.salvaged == 1 and "damaged at offset" in caplog.text
    assert list(segment.parent.glob("*.damaged-*")), "the damaged file is kept aside"
    again.close()


def test_damage_can_refuse_to_start_instead(tmp_path):
    journal = Journal(str(tmp_path))
    journal.open()
    journal.append_jobs(make_named_jobs(3))
    journal.close()
    _damage_middle_record(journal)
    with pytest.raises(JournalError, match="JOURNAL_CORRUPT=salvage"):
        Journal(str(tmp_path), corrupt="refuse").open()


def test_bytes_that_look_like_a_record_inside_a_torn_body_are_not_replayed(tmp_path):
    journal = Journal(str(tmp_path))
    journal.open()
    fake = make_named_jobs(1, start=9)[0]
    inner = record(JOB, encode_job(fake))
    carrier = make_named_jobs(1)[0]
    carrier.body = b"x" * 10 + inner + b"y" * 50
    journal.append_jobs([carrier])
    journal.close()
    (segment,) = segment_files(journal)
    with open(segment, "r+b") as file:
        file.truncate(segment.stat().st_size - 20)  # torn inside the "y"s
    again = Journal(str(tmp_path))
    assert again.open().jobs == [], "a client's bytes never become a job"
    again.close()


def _damaged_and_torn(directory: Path) -> None:
    journal = Journal(str(directory))
    journal.open()
    for i in range(5):
        journal.append_jobs(make_jobs(1, start=i))
    journal.close()
    (segment,) = segment_paths(directory)
    data = bytearray(segment.read_bytes())
    one = len(data) // 5
    data[one + one // 2] ^= 0xFF  # a bit flip inside the second record
    segment.write_bytes(bytes(data[:-5]))  # and the last one torn


def test_damage_before_valid_records_is_damage_even_with_a_torn_tail(tmp_path):
    _damaged_and_torn(tmp_path)
    ids, _ = reopened(tmp_path)
    assert ids == ["c-00000", "c-00002", "c-00003"], "the intact records salvaged"
    assert list(tmp_path.glob("slot-0/*.damaged-*")), "the damaged file kept aside"


def test_damage_with_a_torn_tail_can_refuse_to_start(tmp_path):
    _damaged_and_torn(tmp_path)
    with pytest.raises(JournalError, match="JOURNAL_CORRUPT=salvage"):
        Journal(str(tmp_path), corrupt="refuse").open()
