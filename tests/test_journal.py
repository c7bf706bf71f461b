"""The journal: 202s that survive a crash of the web.

Fast tests drive `greenpipe.journal.Journal` on a temporary directory; the
rest run real processes: kill -9 of the web under a backlog and a restart on
the same journal, a file size limit (RLIMIT_FSIZE) as a full disk, and
Idempotency-Key across a restart.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from greenpipe.errors import ConfigError
from greenpipe.jobs import Envelope
from greenpipe.journal import JOB, Journal, JournalError, compaction, encode_job, record
from tests.support import Load, poll_until, read_records


def _jobs(count: int, start: int = 0) -> list[Envelope]:
    jobs = []
    for i in range(start, start + count):
        job = Envelope(f"t-{i:04d}", b"POST", b"/jobs", b"a=1", b"application/json",
                       b'{"n": %d}' % i, None, b"welcome" if i % 2 else b"")  # fmt: skip
        job.attempt = 1
        jobs.append(job)
    return jobs


def _segment_files(journal: Journal) -> list[Path]:
    return sorted(Path(journal.path).glob("seg-*.log"))


def test_jobs_not_acknowledged_are_replayed_whole(tmp_path):
    first = Journal(str(tmp_path))
    assert first.open().jobs == []
    jobs = _jobs(4)
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


def test_a_torn_tail_is_cut_off_and_the_good_records_replayed(tmp_path, caplog):
    journal = Journal(str(tmp_path))
    journal.open()
    journal.append_jobs(_jobs(3))
    journal.close()
    (segment,) = _segment_files(journal)
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
    (segment,) = _segment_files(journal)
    data = bytearray(segment.read_bytes())
    one = len(data) // 3
    data[one + one // 2] ^= 0xFF  # a bit flip inside the second record
    segment.write_bytes(bytes(data))
    return segment


def test_damage_followed_by_good_records_is_salvaged_and_moved_aside(tmp_path, caplog):
    journal = Journal(str(tmp_path))
    journal.open()
    journal.append_jobs(_jobs(3))
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
    journal.append_jobs(_jobs(3))
    journal.close()
    _damage_middle_record(journal)
    with pytest.raises(JournalError, match="JOURNAL_CORRUPT=salvage"):
        Journal(str(tmp_path), corrupt="refuse").open()


def test_bytes_that_look_like_a_record_inside_a_torn_body_are_not_replayed(tmp_path):
    journal = Journal(str(tmp_path))
    journal.open()
    fake = _jobs(1, start=9)[0]
    inner = record(JOB, encode_job(fake))
    carrier = _jobs(1)[0]
    carrier.body = b"x" * 10 + inner + b"y" * 50
    journal.append_jobs([carrier])
    journal.close()
    (segment,) = _segment_files(journal)
    with open(segment, "r+b") as file:
        file.truncate(segment.stat().st_size - 20)  # torn inside the "y"s
    again = Journal(str(tmp_path))
    assert again.open().jobs == [], "a client's bytes never become a job"
    again.close()


def test_size_follows_what_is_owed_not_the_history(tmp_path, monkeypatch):
    monkeypatch.setattr(compaction, "SEGMENT_ROLL", 4096)
    journal = Journal(str(tmp_path))
    journal.open()
    sizes = []
    for round_ in range(200):
        jobs = _jobs(20, start=round_ * 20)
        journal.append_jobs(jobs)
        journal.acked(jobs)
        sizes.append(journal.size())
    assert max(sizes[100:]) <= 2 * 4096 + 4096, sizes[-10:]
    assert len(_segment_files(journal)) <= 2
    journal.close()


def test_keys_outlive_the_segments_their_jobs_were_in(tmp_path, monkeypatch):
    monkeypatch.setattr(compaction, "SEGMENT_ROLL", 512)
    keys = {"order-7": ("t-0000", 1e12)}
    journal = Journal(str(tmp_path), keys=lambda: keys)
    journal.open()
    first = _jobs(1)
    journal.append_jobs(first, [("order-7", 1e12)])
    for round_ in range(20):  # its segment drains and goes
        jobs = _jobs(5, start=100 + round_ * 5)
        journal.append_jobs(jobs)
        journal.acked(first + jobs if round_ == 0 else jobs)
    journal.close()
    again = Journal(str(tmp_path))
    assert again.open().keys["order-7"][0] == "t-0000"
    again.close()


def test_each_process_its_own_slot_and_orphans_are_adopted(tmp_path):
    alive = Journal(str(tmp_path))
    alive.open()
    dying = Journal(str(tmp_path))
    dying.open()
    assert (alive.slot, dying.slot) == (0, 1), "never two writers on one journal"
    dying.append_jobs(_jobs(2))
    dying.close()  # as the kernel does for a process killed with -9
    alive.close()
    heir = Journal(str(tmp_path))
    replay = heir.open()
    assert heir.slot == 0 and replay.adopted == [1]
    assert sorted(job.id for job in replay.jobs) == ["t-0000", "t-0001"]
    assert not list((tmp_path / "slot-1").glob("seg-*")), "now owed by slot 0"
    heir.close()
    again = Journal(str(tmp_path))
    assert len(again.open().jobs) == 2, "adopted jobs are in the heir's journal"
    again.close()


def test_a_journal_directory_that_cannot_be_made_is_a_config_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="JOURNAL_DIR: cannot create"):
        Journal(str(blocker / "journal")).open()


def test_batch_mode_syncs_each_group(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(os, "fdatasync", lambda fd: synced.append(fd))
    journal = Journal(str(tmp_path), sync="batch")
    journal.open()
    journal.append_jobs(_jobs(5))
    journal.append_jobs(_jobs(5, start=5))
    assert len(synced) == 2, "one fdatasync per group commit, not per job"
    journal.close()


def test_a_failed_sync_rewrites_the_batch_to_a_new_segment(tmp_path, monkeypatch):
    calls = []

    def flaky(fd):
        calls.append(fd)
        if len(calls) == 1:
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", flaky)
    journal = Journal(str(tmp_path), sync="batch")
    journal.open()
    journal.append_jobs(_jobs(3))
    assert len(calls) == 2 and len(_segment_files(journal)) == 2
    journal.close()
    again = Journal(str(tmp_path))
    assert sorted(j.id for j in again.open().jobs) == ["t-0000", "t-0001", "t-0002"]
    again.close()


# -- real processes -------------------------------------------------------------


def test_web_kill_9_under_a_backlog_loses_no_202(start_worker, start_web, record_dir,
                                                 tmp_path):  # fmt: skip
    workers = [start_worker(env={"GREENPIPE_SLEEP": "0.02"}, concurrency=5)
               for _ in range(3)]  # fmt: skip
    journal_dir = tmp_path / "journal"
    accepted: set[str] = set()
    for _ in range(2):
        web = start_web(workers, journal_dir=journal_dir)
        load = Load(web.port, None, 30)
        assert load.started.wait(10), "30 clients sending"
        poll_until(web.stats, lambda s: s["pending"] > 100, 15,
                   "a backlog of 100 jobs behind the slow workers")  # fmt: skip
        web.proc.signal(signal.SIGKILL)
        web.proc.wait_exit(5)
        load.stop()
        load.join(30)
        accepted |= load.accepted_ids()
    web = start_web(workers, journal_dir=journal_dir)
    replayed = int(web.proc.expect(r"replaying (\d+) jobs owed")[1])
    assert replayed > 50, f"a backlog was there to lose: {replayed} replayed"
    web.wait_settled(60)
    handled = Counter(job_id for entries in read_records(record_dir).values()
                      for job_id, _ in entries)  # fmt: skip
    lost = accepted - set(handled)
    assert accepted and not lost, (
        f"{len(lost)} of {len(accepted)} 202s lost: {sorted(lost)[:5]}"
    )


def test_a_full_disk_answers_503_naming_the_journal_and_recovers(start_worker, start_web,
                                                                 tmp_path, record_dir):  # fmt: skip
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit is not installed (apt-get install util-linux)")
    worker = start_worker()
    web = start_web([worker], journal_dir=tmp_path / "journal")
    limit = 64 * 1024
    subprocess.run(
        ["prlimit", f"--pid={web.proc.pid}", f"--fsize={limit}:unlimited"], check=True
    )
    statuses, ids = Counter(), []
    body = {"pad": "x" * 2000}
    for _ in range(60):  # about 2 KiB a job: the limit is reached on the way
        status, _, answer = web.post("/jobs", body)
        statuses[status] += 1
        if status == 202:
            ids.append(answer["id"])
        else:
            detail = answer["detail"]
    assert statuses[503] > 0 and statuses[202] > 0, statuses
    assert "cannot journal" in detail and str(tmp_path / "journal") in detail, detail
    assert web.get("/healthz")[0] == 503
    subprocess.run(
        ["prlimit", f"--pid={web.proc.pid}", "--fsize=unlimited:unlimited"], check=True
    )
    status, _, answer = web.post("/jobs", body)
    assert status == 202, answer
    ids.append(answer["id"])
    web.wait_settled(20)
    handled = {
        job_id for entries in read_records(record_dir).values() for job_id, _ in entries
    }
    assert set(ids) <= handled, "every 202 handled, before and after the full disk"
    assert poll_until(
        lambda: web.get("/healthz")[0], lambda c: c == 200, 5, "healthy again"
    )


def test_idempotency_key_returns_the_first_job_across_a_restart(start_worker, start_web,
                                                                tmp_path, record_dir):  # fmt: skip
    worker = start_worker()
    journal_dir = tmp_path / "journal"
    web = start_web([worker], journal_dir=journal_dir)
    headers = {"Idempotency-Key": '"order-42"'}
    first = web.post("/jobs", {"n": 1}, headers=headers)
    again = web.post("/jobs", {"n": 1}, headers=headers)
    assert first[0] == again[0] == 202 and first[2]["id"] == again[2]["id"]
    web.wait_settled()
    assert web.proc.stop() == 0
    web = start_web([worker], journal_dir=journal_dir)
    after = web.post("/jobs", {"n": 1}, headers=headers)
    assert after[2]["id"] == first[2]["id"], "the key survived the restart"
    other = web.post("/jobs", {"n": 1}, headers={"Idempotency-Key": "order-43"})
    assert other[2]["id"] != first[2]["id"]
    bad = web.post("/jobs", {}, headers={"Idempotency-Key": "é" * 3})
    assert bad[0] == 400 and "Idempotency-Key" in bad[2]["detail"]
    web.wait_settled()
    handled = [job_id for entries in read_records(record_dir).values()
               for job_id, _ in entries]  # fmt: skip
    assert handled.count(first[2]["id"]) == 1, "one job for one key"


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
        jobs = _jobs(2, start=2 * round_)
        journal.append_jobs(jobs, [(f"k{round_}", 1.0), ("", 0.0)])
        journal.acked(jobs)
    assert threads and loop_thread not in threads, "a sync ran on the event loop"
    journal.close()
