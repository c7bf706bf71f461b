"""Results you can find again (issue 33): finished jobs' records in an SQLite
file beside the journal (`greenpipe.results`), answered after SIGTERM,
kill -9 and from every process on the port; an id past STATUS_TTL answered
410 (expired), one never made 404.

The store on its own and the order it keeps with the journal (a seeded model:
a crash at any switch leaves each accepted job either owed by the journal or
recorded in the store) run in process; the restarts are real processes.
"""

from __future__ import annotations

import random
import shutil
import signal
import sqlite3
import time
from pathlib import Path

import gevent
import pytest

from greenpipe import protocol, results
from greenpipe.errors import ConfigError, Unavailable
from greenpipe.finished import FinishedJobs
from greenpipe.jobs import Envelope, Progress, Status, issued_at, new_job_id
from greenpipe.journal import Journal
from greenpipe.results import FILE_NAME, ResultStore, store_path
from tests.support import Load, poll_until
from tests.test_core import Clock, hear, make, ready

# -- the store on its own ------------------------------------------------------------


def _record(
    status=Status.DONE, payload=b'{"n": 1}', finished=None, name=b"ship", progress=None
):
    return (status, "w1", 1, payload, finished or time.time(), 0, name, progress)


@pytest.mark.inprocess
def test_a_record_written_is_answered_by_another_connection_as_memory_would(tmp_path):
    path = str(tmp_path / "results.sqlite3")
    writer, reader = ResultStore(path, 300, 1 << 20), ResultStore(path, 300, 1 << 20)
    writer.open()
    reader.open()  # another process's connection to the same file
    try:
        memory = FinishedJobs(10, 300)
        memory.add("a-1", Status.DONE, "w1", 1, b'{"n": 1}', name=b"ship")
        memory.add("a-2", Status.FAILED, "w1", 2, b"RuntimeError: boom", retries=1)
        memory.fresh = []
        memory.add("a-1", Status.DONE, "w1", 1, b'{"n": 1}', name=b"ship")
        memory.add(
            "a-2",
            Status.FAILED,
            "w1",
            2,
            b"RuntimeError: boom",
            retries=1,
            progress=Progress(7, 10, "page 7 \u00e9", 1_700_000_000.25),
        )
        memory.add(
            "a-3",
            Status.CANCELLED,
            "w1",
            1,
            b"cancelled",
            progress=Progress(2.5, None, "", 1_700_000_001.0),
        )
        writer.write(*memory.take_fresh())
        for job_id in ("a-1", "a-2", "a-3"):
            stored, kept = reader.get(job_id), memory.get(job_id)
            assert stored is not None and kept is not None
            assert abs(stored.pop("finished_at") - kept.pop("finished_at")) < 0.01
            assert stored == kept, "the store answers what memory answered"
        assert reader.get("a-2")["progress"] == {
            "done": 7,
            "total": 10,
            "note": "page 7 \u00e9",
            "at": 1_700_000_000.25,
        }
        assert reader.get("a-3")["progress"]["total"] is None
        assert "progress" not in reader.get("a-1")
        assert reader.get("a-4") is None
        assert reader.count() == 3 and writer.written == 3
    finally:
        writer.close()
        reader.close()


@pytest.fixture
def opened(tmp_path):
    """ResultStore(path, ttl, size), opened; closed after the test."""
    stores: list[ResultStore] = []

    def open_(ttl: float, size: int) -> ResultStore:
        store = ResultStore(str(tmp_path / f"r{len(stores)}.sqlite3"), ttl, size)
        store.open()
        stores.append(store)
        return store

    yield open_
    for store in stores:
        store.close()


@pytest.mark.inprocess
def test_records_past_the_ttl_are_not_answered_and_go(opened):
    store = opened(60, 1 << 20)
    now = time.time()
    store.write([("old", _record(finished=now - 61)), ("new", _record())])
    store.prune()  # the keeper's, once a second
    assert store.get("old") is None, "past STATUS_TTL: not answered"
    assert store.get("new")["status"] == "done"
    assert store.count() == 1, "and deleted when pruned"


@pytest.mark.inprocess
def test_the_file_stays_within_its_size_the_oldest_going_first(opened):
    size = 512 * 1024
    store = opened(3600, size)
    for batch in range(40):  # 40 x 10 records of 4 KiB: 1.6 MB offered
        store.write([(f"j{batch}-{i}", _record(payload=b'"' + b"x" * 4096 + b'"'))
                     for i in range(10)])  # fmt: skip
        store.prune()  # the keeper's, once a second
    db = sqlite3.connect(store.path)
    pages, free, page = (db.execute(f"PRAGMA {p}").fetchone()[0]
                         for p in ("page_count", "freelist_count", "page_size"))  # fmt: skip
    db.close()
    assert (pages - free) * page <= size, "the pages in use fit RESULT_STORE_SIZE"
    assert store.get("j39-9") is not None, "the newest stay"
    assert store.get("j0-0") is None, "the oldest went first"


@pytest.mark.inprocess
def test_a_result_over_64_kib_is_not_kept_an_error_is_cut(opened):
    store = opened(300, 1 << 24)
    big = b'"' + b"x" * (70 * 1024) + b'"'
    store.write([("r", _record(payload=big)),
                 ("e", _record(Status.FAILED, payload=b"E" * (70 * 1024)))])  # fmt: skip
    assert store.get("r")["result_not_kept"].startswith(f"{len(big)} bytes")
    assert "result" not in store.get("r")
    assert len(store.get("e")["error"]) == 64 * 1024


@pytest.mark.inprocess
def test_a_damaged_file_is_moved_aside_and_an_unusable_path_named(tmp_path, caplog):
    path = tmp_path / "results.sqlite3"
    path.write_bytes(b"not an sqlite file " * 100)
    store = ResultStore(str(path), 300, 1 << 20)
    store.open()
    store.close()
    aside = [p.name for p in tmp_path.iterdir() if ".damaged-" in p.name]
    assert aside, "the damaged file kept, beside"
    assert "not an SQLite database" in caplog.text and aside[0] in caplog.text
    (tmp_path / "dir.sqlite3").mkdir()
    with pytest.raises(ConfigError) as caught:
        ResultStore(str(tmp_path / "dir.sqlite3"), 300, 1 << 20).open()
    message = str(caught.value)
    assert "RESULT_STORE" in message and "dir.sqlite3" in message
    assert "RESULT_STORE=off" in message, "and what to do"
    with pytest.raises(ConfigError, match="no directory"):  # a typo is not made
        ResultStore(str(tmp_path / "typo" / "r.sqlite3"), 300, 1 << 20).open()
    assert not (tmp_path / "typo").exists()


@pytest.mark.inprocess
def test_where_the_store_is():
    assert store_path("journal", "/var/j") == f"/var/j/{FILE_NAME}"
    assert store_path("journal", "off") == "", "no journal, no file beside it"
    assert store_path("off", "/var/j") == ""
    assert store_path("/srv/r.sqlite3", "off") == "/srv/r.sqlite3"


@pytest.mark.inprocess
def test_an_id_says_when_it_was_made():
    job_id = new_job_id("abcd0123-")
    assert abs(issued_at(job_id) - time.time()) < 2
    assert issued_at("abcd0123-" + "f" * 32) is None, "an older id: no time in it"
    assert issued_at("abcd0123-" + "z" * 40) is None
    assert issued_at("nonsense") is None


# -- the order with the journal: a model ---------------------------------------------


def _pending(d) -> list[Envelope]:
    return [job for link in d.links for job in link.jobs.values()]


def _crash(source: Path, dest: Path) -> tuple[set[str], ResultStore]:
    """What kill -9 leaves now: the journal's owed jobs, and the store."""
    shutil.copytree(source, dest)
    journal = Journal(str(dest))
    try:
        owed = {job.id for job in journal.open().jobs}
    finally:
        journal.close()
    store = ResultStore(str(dest / FILE_NAME), 3600, 1 << 26)
    store.open()
    return owed, store


@pytest.mark.inprocess
@pytest.mark.parametrize("sync", ["none", "batch"])
def test_a_crash_at_any_switch_leaves_each_job_owed_or_recorded(tmp_path, sync):
    """Each accepted job, after kill -9 at any moment, is either replayed (the
    journal owes it) or answered from the store: never both forgotten. The
    keeper's greenlet runs between the steps when the schedule yields; a
    crash is taken at random steps, mid-write included; cancels of queued and
    running jobs among them. With the ACK written before the record (the
    obvious order), or a cancel's record after its journal record, this fails."""
    for seed in range(4):
        _schedule(tmp_path / str(seed), seed, sync)


@pytest.mark.inprocess
@pytest.mark.thorough
@pytest.mark.parametrize("chunk", range(4))
@pytest.mark.parametrize("sync", ["none", "batch"])
def test_a_crash_at_any_switch_leaves_each_job_owed_or_recorded_more_seeds(
    tmp_path, sync, chunk
):
    for seed in range(4 + 10 * chunk, 14 + 10 * chunk):
        _schedule(tmp_path / str(seed), seed, sync)


def _schedule(tmp_path: Path, seed: int, sync: str) -> None:
    rng = random.Random(seed)
    d = make(Clock(), workers="127.0.0.1:1", journal_dir=tmp_path / "journal",
             status_ttl=3600, journal_sync=sync)  # fmt: skip
    d.start()
    ready(d, d.links[0], credit=50)
    accepted: list[str] = []
    crashes = 0
    try:
        for step in range(120):
            roll = rng.random()
            if roll < 0.35:
                accepted.append(d.submit(Envelope.new(b"", b"", b"", b"", b"{}",
                                                      name=b"ship")).id)  # fmt: skip
                d.flush()
            elif roll < 0.65 and _pending(d):
                jobs = rng.sample(_pending(d), min(len(_pending(d)), rng.randint(1, 4)))
                failed = [protocol.encode_result(j.id.encode(), protocol.FAILED, b"E")
                          for j in jobs if rng.random() < 0.3]  # fmt: skip
                done = [j.id.encode() for j in jobs][len(failed) :]
                hear(d, d.links[0], protocol.encode_acks(done, failed))
            elif roll < 0.75:  # queued, then cancelled: its record as a job's
                job = d.submit(Envelope.new(b"", b"", b"", b"", b"{}", name=b"x"))
                accepted.append(job.id)
                assert d.cancel(job.id)["status"] in ("cancelled", "in_flight")
            elif roll < 0.85:
                gevent.sleep(0)  # sleep-ok: a switch, the keeper's chance to run
            else:
                crashes += 1
                owed, store = _crash(tmp_path / "journal", tmp_path / f"crash{step}")
                try:
                    forgotten = [i for i in accepted
                                 if i not in owed and store.get(i) is None]  # fmt: skip
                finally:
                    store.close()
                assert not forgotten, (
                    f"seed {seed} ({sync}), step {step}: after a crash {len(forgotten)} "
                    f"accepted jobs are neither owed by the journal nor in the "
                    f"store: {forgotten[:3]}"
                )
            if rng.random() < 0.1:
                d.journal.flush_acks()  # a heartbeat's ACK records
    finally:
        d.close()
    assert crashes > 5 and accepted


# -- real processes -----------------------------------------------------------------


def _all_done(web, ids: list[str]) -> None:
    for job_id in ids:
        poll_until(lambda i=job_id: web.get(f"/jobs/{i}"),
                   lambda r: r[0] == 200 and r[2]["status"] == "done", 20,
                   f"job {job_id} done")  # fmt: skip


def test_a_finished_jobs_record_outlives_sigterm_and_kill_9(start_worker, start_web,
                                                            tmp_path):  # fmt: skip
    """Before: after a restart every finished job answered 404 "never accepted"."""
    worker = start_worker()
    web = start_web([worker])
    ids = [web.post("/jobs", {"result": {"n": n}})[2]["id"] for n in range(10)]
    failed = web.post("/jobs", {"fail": "out of stock"})[2]["id"]
    _all_done(web, ids)
    poll_until(lambda: web.get(f"/jobs/{failed}")[2]["status"], "failed".__eq__, 20,
               "the failing job failed")  # fmt: skip
    web.proc.signal(signal.SIGTERM)
    assert web.proc.wait_exit(10) == 0
    web = start_web([worker])
    for n, job_id in enumerate(ids):
        status, _, record = web.get(f"/jobs/{job_id}")
        assert status == 200 and record["result"] == {"n": n}, (status, record)
    status, _, record = web.get(f"/jobs/{failed}")
    assert status == 200 and record["status"] == "failed", record
    assert "out of stock" in record["error"]
    more = [web.post("/jobs", {"result": n})[2]["id"] for n in range(10)]
    _all_done(web, more)
    web.proc.signal(signal.SIGKILL)
    web.proc.wait_exit(5)
    web = start_web([worker])
    for job_id in ids + more:
        status, _, record = web.get(f"/jobs/{job_id}")
        assert status == 200 and record["status"] == "done", (job_id, status, record)


def test_after_kill_9_under_load_every_accepted_id_is_found(start_worker, start_web):
    """The issue's count: after one kill -9 under load, 1,002 of 1,063 accepted
    ids that had run answered 404. Now each is owed (replayed) or recorded."""
    workers = [start_worker() for _ in range(2)]
    web = start_web(workers)
    load = Load(web.port, None, 20)
    assert load.started.wait(10), "20 clients sending"
    poll_until(web.stats, lambda s: s["acked"] > 300, 20, "300 jobs acknowledged")
    web.proc.signal(signal.SIGKILL)
    web.proc.wait_exit(5)
    load.stop()
    load.join(30)
    accepted = sorted(load.accepted_ids())
    web = start_web(workers)
    web.wait_settled(30)
    missing = [i for i in accepted if web.get(f"/jobs/{i}")[0] != 200]
    assert len(accepted) > 300 and not missing, (
        f"{len(missing)} of {len(accepted)} accepted ids unknown after kill -9 and "
        f"a restart: {missing[:3]}"
    )


def test_after_a_rolling_restart_every_process_answers_and_an_old_id_expired(
    start_worker, start_web
):
    """WEB_PROCESSES=2, SIGUSR2: the processes that accepted the jobs are gone;
    the new ones answer from the store, whichever a connection reaches."""
    worker = start_worker()
    web = start_web([worker], web_processes=2, status_ttl=60)
    ids = [web.post("/jobs", {"result": n})[2]["id"] for n in range(20)]
    _all_done(web, ids)
    web.proc.signal(signal.SIGUSR2)
    web.proc.expect(r"rolling restart done in ([\d.]+) s", 30)
    for n, job_id in enumerate(ids):  # each on a new connection: either process
        status, _, record = web.get(f"/jobs/{job_id}")
        assert status == 200 and record["result"] == n, (job_id, status, record)
    prefix = ids[0].split("-")[0]
    old = f"{prefix}-{int(time.time()) - 3600:08x}{'0' * 32}"
    status, _, answer = web.get(f"/jobs/{old}")
    assert status == 410, (status, answer)
    assert "expired" in answer["detail"] and "STATUS_TTL" in answer["detail"]
    fresh = f"{prefix}-{int(time.time()):08x}{'0' * 32}"
    status, _, answer = web.get(f"/jobs/{fresh}")
    assert status == 404 and "never accepted" in answer["detail"], answer
    assert "a scheduler" in answer["detail"], "another process's id: may still run"


# -- the careful reader's review (each failed before its fix) -------------------------


def _web(tmp_path: Path, credit: int = 10, **flags):
    d = make(Clock(), workers="127.0.0.1:1", journal_dir=tmp_path / "journal",
             status_ttl=3600, **flags)  # fmt: skip
    d.start()
    ready(d, d.links[0], credit=credit)
    return d


def _lock_store(tmp_path: Path) -> sqlite3.Connection:
    """Another process's write under way: the store's write lock, held."""
    other = sqlite3.connect(str(tmp_path / "journal" / FILE_NAME), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    return other


def _owed(tmp_path: Path, name: str) -> set[str]:
    owed, store = _crash(tmp_path / "journal", tmp_path / name)
    store.close()
    return owed


def _until(done, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        gevent.sleep(0.005)  # sleep-ok: a yield in a polling loop with a deadline


@pytest.mark.inprocess
def test_a_store_that_cannot_write_keeps_the_jobs_owed_and_refuses_a_cancel(tmp_path):
    """R1: the keeper acknowledged jobs whose records it failed to write (the
    store locked, read-only, full), and a cancel was journaled though its
    record was not: after kill -9 they answered 404. Now the jobs stay owed
    until their records are written, and such a cancel answers 503."""
    d = _web(tmp_path, credit=1)
    try:
        other = _lock_store(tmp_path)
        first = d.submit(Envelope.new(b"", b"", b"", b"", b"{}", name=b"a"))
        d.flush()
        queued = d.submit(Envelope.new(b"", b"", b"", b"", b"{}", name=b"b"))
        hear(d, d.links[0], protocol.encode_acks([first.id.encode()]))
        _until(lambda: d.results.busy > 1, "writes refused by the lock")
        assert first.id in _owed(tmp_path, "crash1"), "not written: still owed"
        with pytest.raises(Unavailable, match="result store"):
            d.cancel(queued.id)
        assert d.status(queued.id)["status"] in ("queued", "in_flight"), (
            "the cancel changed nothing: the job is back"
        )
        other.execute("ROLLBACK")
        other.close()
        _until(lambda: d.stored(first.id) is not None, "the record written at last")

        def acknowledged() -> bool:
            d.journal.flush_acks()  # a heartbeat's ACK records (the clock is fake)
            return first.id not in _owed(tmp_path, f"c{time.monotonic()}")

        _until(acknowledged, "and then the job acknowledged")
    finally:
        d.close()


@pytest.mark.inprocess
def test_a_replayed_job_answers_where_it_is_from_every_process(tmp_path):
    """R2: a job finished, its record written, kill -9 before its ACK record:
    the restart runs it again. Another process sharing the store answered the
    first run's "done" without asking the one holding it."""
    from greenpipe.pipe import Pipe

    store = str(tmp_path / "results.sqlite3")
    a = make(Clock(), workers="127.0.0.1:1", journal_dir=tmp_path / "a",
             status_ttl=3600, result_store=store)  # fmt: skip
    a.start()
    ready(a, a.links[0])
    job = a.submit(Envelope.new(b"", b"", b"", b"", b"{}", name=b"charge"))
    a.flush()
    hear(a, a.links[0], protocol.encode_acks([job.id.encode()]))
    _until(lambda: a.stored(job.id) is not None, "its record written")
    shutil.copytree(tmp_path / "a", tmp_path / "a2")  # kill -9: no ACK record yet
    a.close()
    a2 = make(Clock(), workers="127.0.0.1:1", journal_dir=tmp_path / "a2",
              status_ttl=3600, result_store=store)  # fmt: skip
    a2.start()
    ready(a2, a2.links[0])
    a2.flush()
    b = make(Clock(), workers="127.0.0.1:1", journal_dir=tmp_path / "b",
             status_ttl=3600, result_store=store)  # fmt: skip
    b.start()

    class Siblings:  # greenpipe.siblings' contract: the holder's own answer
        status = staticmethod(a2.status)
        cancel = staticmethod(a2.cancel)

    pipe = Pipe.__new__(Pipe)
    pipe.dispatcher, pipe.siblings, pipe.started = b, Siblings(), True
    try:
        assert a2.status(job.id)["status"] == "in_flight", "running again"
        assert pipe.status(job.id)["status"] == "in_flight", (
            "the other process answers what the holder says, not the store's done"
        )
    finally:
        a2.close()
        b.close()


@pytest.mark.inprocess
def test_a_cancel_interrupted_while_its_record_is_written_leaves_the_job_to_run(
    tmp_path, monkeypatch
):
    """R3: a cancel under a view's gevent.Timeout, interrupted while its
    provisional record waited for the store: the job was out of its queue
    and never ran, and a second cancel recursed without end (a 500)."""
    d = _web(tmp_path, credit=1)
    try:
        first = d.submit(Envelope.new(b"", b"", b"", b"", b"{}", name=b"a"))
        d.flush()  # takes the one credit
        job = d.submit(Envelope.new(b"", b"", b"", b"", b"{}", name=b"a"))
        other = _lock_store(tmp_path)
        with pytest.raises(gevent.Timeout):  # while it tries again
            with gevent.Timeout(results.KEEP_EVERY * 2):  # the view's own limit
                d.cancel(job.id)
        other.execute("ROLLBACK")
        other.close()
        assert d.status(job.id)["status"] == "queued", "back in its queue"
        hear(d, d.links[0], protocol.encode_acks([first.id.encode()]))
        d.flush()
        _until(lambda: d.status(job.id)["status"] == "in_flight",
               "the job sent once the credit is back")  # fmt: skip
        answer = d.cancel(job.id)  # a second cancel: an answer, no recursion
        assert answer["status"] == "in_flight" and answer["cancelling"], answer
    finally:
        d.close()


@pytest.mark.inprocess
def test_lookups_do_not_wait_for_a_write_held_up_by_another_process(tmp_path):
    """R4: one connection for writes and lookups, its lock held through
    SQLite's busy wait: 12 lookups waited for it, each taking a thread of
    the pool the journal's syncs share, and a submit waited behind them.
    Now a write never waits (refused, tried again), lookups read on a
    connection of their own, in the pool, one thread at most."""
    d = _web(tmp_path, journal_sync="batch")
    try:
        other = _lock_store(tmp_path)
        job = d.submit(Envelope.new(b"", b"", b"", b"", b"{}", name=b"a"))
        d.flush()
        hear(d, d.links[0], protocol.encode_acks([job.id.encode()]))
        _until(lambda: d.results.busy, "the keeper's write refused")
        lookups = [gevent.spawn(d.stored, new_job_id("ffffffff-")) for _ in range(12)]
        gevent.joinall(lookups, timeout=10)
        assert all(each.ready() for each in lookups), "lookups answered meanwhile"
        more = gevent.spawn(d.submit, Envelope.new(b"", b"", b"", b"", b"{}"))
        more.join(10)
        assert more.successful(), "a submit (a group's sync in the pool) meanwhile"
        assert d.stored(job.id) is None and not d.results.failures, (
            "all of it while the other process still held the write"
        )
        other.execute("ROLLBACK")
        other.close()
        _until(lambda: d.stored(job.id) is not None, "then the record written")
    finally:
        d.close()


# -- the second careful reader's review ---------------------------------------------


@pytest.mark.inprocess
def test_pruning_runs_in_the_pool_in_short_transactions_never_in_a_write(
    opened, monkeypatch
):
    """Review 2, finding 1: expiry and the size bound ran inside the keeper's
    write, on the event loop: 300,000 expired rows froze the process 1.6 s.
    Now a write only inserts; pruning runs in the pool, PRUNE_CHUNK rows a
    transaction (another process's write, or ours, waits that long at most)."""
    import threading

    monkeypatch.setattr(results, "PRUNE_CHUNK", 50)
    store = opened(60, 1 << 30)
    old = time.time() - 120
    store.write([(f"old{i}", _record(finished=old)) for i in range(500)])
    store.write([("new", _record())])
    assert store.count() == 501, "a write deletes nothing"
    deleted, threads = [], set()
    real = results._prune_expired

    def watched(db, now):
        threads.add(threading.get_ident())
        deleted.append(real(db, now))
        return deleted[-1]

    monkeypatch.setattr(results, "_prune_expired", watched)
    store.prune()
    assert store.count() == 1 and store.get("new") is not None
    assert max(deleted) <= 50 and sum(deleted) == 500, deleted
    assert threading.get_ident() not in threads, "in the pool, not on the loop"


@pytest.mark.inprocess
def test_a_cancel_waits_out_another_processs_write(tmp_path):
    """Review 2, finding 2: a cancel gave up after 100 ms of another process's
    write (a prune) and answered 503. Now it tries while the other writes,
    and answers once the store takes its record."""
    d = _web(tmp_path, credit=1)
    try:
        first = d.submit(Envelope.new(b"", b"", b"", b"", b"{}", name=b"a"))
        d.flush()  # takes the one credit: the next job stays queued
        job = d.submit(Envelope.new(b"", b"", b"", b"", b"{}", name=b"a"))
        other = _lock_store(tmp_path)
        busy = d.results.busy
        cancel = gevent.spawn(d.cancel, job.id)
        _until(lambda: d.results.busy > busy, "the cancel's record refused once")
        other.execute("ROLLBACK")  # the other process's write ends
        other.close()
        assert cancel.get(timeout=10)["status"] == "cancelled"
        assert first.id  # sent, untouched
    finally:
        d.close()


@pytest.mark.inprocess
def test_processes_sharing_the_file_keep_each_records_for_its_own_ttl(tmp_path):
    """Review 2, finding 4: a scheduler (STATUS_TTL 300) sharing a web's file
    (3600) deleted the web's records at 300 s: the smallest TTL won."""
    path = str(tmp_path / "shared.sqlite3")
    web, scheduler = ResultStore(path, 3600, 1 << 20), ResultStore(path, 300, 1 << 20)
    web.open()
    scheduler.open()
    try:
        long_ago = time.time() - 400
        web.write([("web-job", _record(finished=long_ago))])
        scheduler.write([("its-job", _record(finished=long_ago))])
        scheduler.prune()
        assert web.get("web-job") is not None, "kept for the web's hour"
        assert scheduler.get("its-job") is None, "the scheduler's own: past 300 s"
    finally:
        web.close()
        scheduler.close()


@pytest.mark.inprocess
def test_only_a_webs_old_id_is_said_to_have_expired():
    """Review 2, finding 3: a scheduler's job, waiting or running longer than
    STATUS_TTL, was answered 410 (gone for good) and then 200 once finished."""
    from greenpipe.jobs import made_by_a_web

    old = f"{int(time.time()) - 3600:08x}{'0' * 32}"
    assert made_by_a_web(f"0123abcd-{old}")
    assert not made_by_a_web(f"s0123abcd-{old}"), "a scheduler's: 404 until found"
    assert not made_by_a_web(f"inline1a2b-{old}")
