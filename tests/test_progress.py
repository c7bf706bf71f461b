"""Progress a handler reports (`Job.progress`), seen while it runs and kept.

The wire in microseconds (encode/decode, garbage refused), the worker's side
in-process (the last report per job, brought forward before its ACK), and
real processes: reports seen in order in GET /jobs/<id>, the last one kept in
the record across a restart of the web, a handler's burst of reports costing
no message each.
"""

from __future__ import annotations

import random
import re
import signal
import struct

import pytest

from greenpipe import protocol
from greenpipe.errors import ProtocolError
from greenpipe.jobs import MAX_NOTE, Job, check_progress
from greenpipe.testing import poll_until

pytestmark = pytest.mark.timeout(60)


def _job(raw_id: bytes = b"p-1") -> Job:
    return Job(raw_id, 1, "", "", "", "", b"{}", name="steps")


# -- the handler's call --------------------------------------------------------


@pytest.mark.inprocess
def test_a_report_keeps_only_the_last_call_per_job():
    sink: dict = {}
    job = _job()
    job.report_to(sink)
    for i in range(1000):
        job.progress(i + 1, 1000, f"row {i + 1}")
    assert sink == {b"p-1": (1000, 1000, "row 1000")}
    job.progress(3)
    assert sink[b"p-1"] == (3, 0, ""), "no total: 0 on the wire, None shown"
    job.report_to(None)  # the run ended: a late call stays on the job
    job.progress(4)
    assert sink[b"p-1"] == (3, 0, "") and job.reported == (4, 0, "")


@pytest.mark.inprocess
@pytest.mark.parametrize(
    "args, error, words",
    [
        ((-1, 10), ValueError, "done=-1): must be >= 0"),
        ((1, 0), ValueError, "total=0): must be > 0"),
        ((float("nan"), 3), ValueError, "done=nan"),
        ((1, float("inf")), ValueError, "total=inf"),
        (("3", 10), TypeError, "done='3'): give a number"),
        ((True, 10), TypeError, "done=True"),
        ((1, 10, 5), TypeError, "note=5): give a str"),
    ],
)
def test_bad_progress_says_what_was_wrong_where_the_handler_called(args, error, words):
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        _job().progress(*args)


@pytest.mark.inprocess
def test_a_long_note_is_cut_on_a_character_boundary():
    done, total, note = check_progress(1, 2, "é" * 150)  # 300 bytes of UTF-8
    assert len(note.encode()) <= MAX_NOTE and note == "é" * (MAX_NOTE // 2)
    job = _job()
    job.progress(1, 2, "bad \ud800 half")  # a lone surrogate: still sendable
    assert protocol.decode_progress(protocol.encode_progress({b"j": job.reported})) == [
        (b"j", 1, 2, "bad ? half")
    ]


# -- the wire -------------------------------------------------------------------


@pytest.mark.inprocess
def test_progress_frames_round_trip_and_garbage_is_refused():
    reports = {b"a-1": (3, 10, "page 3"), b"a-2": (0.5, 0, "")}
    frame = protocol.encode_progress(reports)
    assert protocol.decode_progress(frame) == [
        (b"a-1", 3.0, 10.0, "page 3"),
        (b"a-2", 0.5, None, ""),
    ]
    beat = protocol.encode_heartbeat(
        1, 0, 0, 0.1, [0] * (len(protocol.RUN_BUCKETS) + 1)
    )
    assert protocol.decode_heartbeat([*beat, frame]).handled == 1
    rng = random.Random(7)
    for _ in range(2000):  # any bytes: a list or ProtocolError, never another error
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
        if rng.random() < 0.5:
            junk = frame[: rng.randrange(len(frame) + 1)] + junk
        try:
            decoded = protocol.decode_progress(junk)
        except ProtocolError:
            continue
        assert all(len(raw_id) and done >= 0 for raw_id, done, _, _ in decoded)
    negative = struct.pack("!BddB", 1, -1.0, 2.0, 0) + b"x"
    with pytest.raises(ProtocolError, match="-1.0 of 2.0"):
        protocol.decode_progress(negative)


# -- the worker's side, as a model of interleavings ------------------------------


def _explore(seed: int) -> None:
    """Handlers report progress and end at random points while the worker's
    heartbeats and flushes run at others; what the web would hear must hold:

    - each job's reports arrive in the order made (never an older one after a
      newer one);
    - a job's last report arrives before the ACKS that ends it;
    - messages are not per call: at most one heartbeat per tick or flush.
    """
    import gevent

    from greenpipe import Handlers
    from greenpipe.config import WorkerSettings
    from greenpipe.worker import Worker
    from tests.support import ScriptedWeb, job_record

    rng = random.Random(seed)
    plans = {f"m-{i}".encode(): rng.randrange(0, 6) for i in range(rng.randrange(1, 8))}
    handlers = Handlers()

    @handlers.job("steps")
    def steps(job):
        for i in range(1, plans[job.raw_id] + 1):
            job.progress(i, 10, f"step {i}")
            if rng.random() < 0.5:
                gevent.sleep(0)  # sleep-ok: the model's switch point
        return None

    worker = Worker(WorkerSettings(port=0), handlers)
    sent: list[list[bytes]] = []
    worker._send = lambda ident, frames: sent.append(frames) or True  # type: ignore
    web = ScriptedWeb(worker)
    web.jobs(*(job_record(raw_id, "steps") for raw_id in plans))
    ticks = flushes = 0
    for _ in range(200):
        roll = rng.random()
        if roll < 0.3:
            worker._beat(0.0)
            ticks += 1
        elif roll < 0.6:
            worker._flush()
            flushes += 1
        else:
            gevent.sleep(0)  # sleep-ok: the handlers' turn, in the model's order
        if not worker.pool.busy and not web.peer.ok and not web.peer.results:
            break
    worker.pool.idle.wait(5)
    worker._flush()
    flushes += 1
    seen: dict[bytes, float] = {}
    acked: set[bytes] = set()
    beats = 0
    for frames in sent:
        if frames[0] == protocol.HEARTBEAT:
            beats += 1
            if len(frames) == 3:
                for raw_id, done, _, note in protocol.decode_progress(frames[2]):
                    assert raw_id not in acked, (
                        f"seed {seed}: {raw_id} reported after its ACK"
                    )
                    assert done >= seen.get(raw_id, 0), (
                        f"seed {seed}: {raw_id} went back"
                    )
                    assert note == f"step {done:g}"
                    seen[raw_id] = done
        elif frames[0] == protocol.ACKS:
            for raw_id in frames[1].split():
                acked.add(raw_id)
                assert seen.get(raw_id, 0) == plans[raw_id], (
                    f"seed {seed}: {raw_id} acknowledged before its last report "
                    f"({plans[raw_id]}; heard {seen.get(raw_id)})"
                )
    assert acked == set(plans), f"seed {seed}: every job acknowledged"
    assert beats <= ticks + flushes, f"seed {seed}: {beats} heartbeats"


@pytest.mark.inprocess
@pytest.mark.parametrize("seed", range(30))
def test_model_reports_arrive_in_order_and_the_last_before_its_ack(seed):
    _explore(seed)


@pytest.mark.inprocess
@pytest.mark.thorough
def test_model_reports_thorough():
    for seed in range(30, 530):
        _explore(seed)


# -- the web's side: a real Dispatcher on scripted links ---------------------------


def _beat_with(reports: dict) -> list[bytes]:
    beat = protocol.encode_heartbeat(
        0, 0, 0, 0.0, [0] * (len(protocol.RUN_BUCKETS) + 1)
    )
    return [*beat, protocol.encode_progress(reports)]


@pytest.mark.inprocess
def test_the_web_shows_a_report_of_the_worker_holding_the_job_and_keeps_the_last():
    from tests.test_core import Clock, ack, hear, make, ready, submit

    clock = Clock()
    d = make(clock, workers="127.0.0.1:1,127.0.0.1:2")
    for link in d.links:
        ready(d, link)
    first, second = submit(d, 2)
    d.flush()
    holder = next(link for link in d.links if first.key in link.jobs)
    other = next(link for link in d.links if link is not holder)
    hear(d, other, _beat_with({first.key: (9.0, 10.0, "not yours")}))
    assert "progress" not in d.status(first.id), "a worker not holding it is ignored"
    hear(d, holder, _beat_with({first.key: (3.0, 10.0, "page 3")}))
    shown = d.status(first.id)
    assert shown["status"] == "in_flight"
    assert shown["progress"]["done"] == 3 and shown["progress"]["note"] == "page 3"
    hear(d, holder, _beat_with({first.key: (4.0, 10.0, "page 4")}))
    ack(d, holder, first.id)
    kept = d.status(first.id)
    assert kept["status"] == "done" and kept["progress"]["done"] == 4, kept
    hear(d, holder, _beat_with({first.key: (9.0, 10.0, "late")}))
    assert d.status(first.id)["progress"]["done"] == 4, (
        "settled: a late report is old news"
    )
    # A job taken back from a lost worker starts its next run without a report.
    other_holder = next(link for link in d.links if second.key in link.jobs)
    hear(d, other_holder, _beat_with({second.key: (5.0, 0.0, "")}))
    assert d.status(second.id)["progress"]["total"] is None
    clock.now += d.settings.heartbeat_timeout + 0.1
    for link in d.links:
        if link is not other_holder:
            hear(d, link, [protocol.HEARTBEAT])
    d.tick()
    waiting = d.status(second.id)  # taken back: the lost run's report goes too
    assert waiting["status"] != "in_flight" and "progress" not in waiting, waiting
    d.flush()
    assert second.attempt == 2 and "progress" not in d.status(second.id)


@pytest.mark.inprocess
def test_inline_mode_keeps_the_last_report_with_the_record():
    from flask import Flask

    from greenpipe import Greenpipe, Handlers

    handlers = Handlers()

    @handlers.job("count")
    def count(job):
        for i in range(1, 4):
            job.progress(i, 3, f"row {i}")

    app = Flask(__name__)
    app.testing = True
    pipe = Greenpipe(app, handlers=handlers)
    with app.app_context():
        receipt = pipe.push("count", json={})
        assert pipe.status(receipt.id)["progress"] == {
            "done": 3,
            "total": 3,
            "note": "row 3",
            "at": pytest.approx(pipe.status(receipt.id)["finished_at"], abs=5),
        }


# -- real processes -----------------------------------------------------------------

HANDLERS = "tests.retry_handlers:handlers"


def test_reports_are_seen_in_order_while_it_runs_and_the_last_outlives_a_restart(
    start_worker, start_app, record_dir, tmp_path
):
    worker = start_worker(handler=HANDLERS)
    journal = tmp_path / "journal"
    web = start_app([worker], journal_dir=journal)
    job_id = web.post("/jobs/steps", {"n": 4})[2]["id"]
    for i in range(1, 5):
        shown = poll_until(
            lambda: web.get(f"/jobs/{job_id}")[2],
            lambda s, i=i: s.get("progress", {}).get("done", 0) >= i,
            10, f"step {i} of 4 in GET /jobs/{job_id}",
        )  # fmt: skip
        assert shown["status"] == "in_flight" and shown["progress"]["done"] == i, (
            "each step is held until the test saw it: none skipped, none back"
        )
        assert (
            shown["progress"]["total"] == 4 and shown["progress"]["note"] == f"step {i}"
        )
        (record_dir / f"{job_id}.go{i}").touch()
    done = poll_until(lambda: web.get(f"/jobs/{job_id}")[2],
                      lambda s: s.get("status") == "done", 10, "the job done")  # fmt: skip
    assert done["progress"]["done"] == 4 and done["result"] == {"steps": 4}
    web.proc.signal(signal.SIGTERM)
    web.proc.wait_exit(15)
    again = start_app([worker], journal_dir=journal)
    kept = again.get(f"/jobs/{job_id}")[2]
    assert kept["status"] == "done" and kept["progress"] == done["progress"], (
        "the last report is kept in the result store"
    )


def test_a_burst_of_reports_ending_at_once_keeps_its_last(start_worker, start_app):
    worker = start_worker(handler=HANDLERS)
    web = start_app([worker])
    ids = [web.post("/jobs/burst", {"n": 5000})[2]["id"] for _ in range(20)]
    for job_id in ids:
        done = poll_until(lambda j=job_id: web.get(f"/jobs/{j}")[2],
                          lambda s: s.get("status") == "done", 10, f"{job_id} done")  # fmt: skip
        assert (
            done["progress"]["done"] == 5000 and done["progress"]["note"] == "item 5000"
        )


def test_the_dashboard_lists_a_running_job_with_its_report(
    start_worker, start_app, record_dir
):
    from tests.support import chromium, render

    worker = start_worker(handler=HANDLERS)
    web = start_app([worker])
    job_id = web.post("/jobs/steps", {"n": 4})[2]["id"]
    (record_dir / f"{job_id}.go1").touch()
    data = poll_until(
        lambda: web.get("/dashboard/data")[2],
        lambda d: any(j["progress"]["done"] == 2 for j in d.get("running", [])),
        10, "the job at step 2 in the dashboard's data",
    )  # fmt: skip
    [row] = data["running"]
    assert (row["id"], row["name"], row["progress"]["note"]) == (
        job_id,
        "steps",
        "step 2",
    )
    from tests.test_resend import _jobs

    listed = _jobs(web, "list")
    assert f"in_flight  {job_id}  steps  on " in listed.stdout, listed.stdout
    assert listed.stdout.rstrip().endswith('  2 of 4  "step 2"'), listed.stdout
    if chromium() is not None:  # the page itself (the data above runs anyway)
        dom = render(f"http://127.0.0.1:{web.port}/dashboard")
        found = re.search(rf'<tr data-job="{job_id}">(.*?)</tr>', dom)
        assert found and "2 of 4" in found[1] and "step 2" in found[1], dom[-3000:]
    for i in range(2, 5):
        (record_dir / f"{job_id}.go{i}").touch()
    poll_until(lambda: web.get("/dashboard/data")[2], lambda d: not d["running"],
               10, "the finished job gone from the running table")  # fmt: skip


# -- the careful reader's review: what the worker keeps always encodes ------------


class _Count(int):
    """An int subclass (as NumPy's are not): accepted, reported as a number."""


@pytest.mark.inprocess
@pytest.mark.parametrize("seed", range(5))
def test_any_value_is_refused_where_called_or_kept_in_a_form_that_encodes(seed):
    """Review: 10**400 passed the check (0 <= x < inf) and crashed the
    worker's send loop at its next heartbeat. Whatever a handler passes,
    `progress` raises TypeError/ValueError, or what it keeps packs and reads
    back as the same numbers."""
    from decimal import Decimal
    from fractions import Fraction

    rng = random.Random(seed)
    pool = [0, 1, 3, -1, 10**400, -(10**400), 2**1023, 2**1024, 0.5, -0.0, 1e308,
            float("inf"), float("nan"), True, None, "3", b"3", Fraction(1, 3),
            Decimal("2.5"), _Count(7), 1j, [], 10**20]  # fmt: skip
    notes = ["", "page 3", "é" * 300, "\ud800", "x" * 500, "a\nb\x00", 5, None]
    for _ in range(300):
        done, total = rng.choice(pool), rng.choice(pool)
        note = rng.choice(notes)
        job = _job()
        sink: dict = {}
        job.report_to(sink)
        try:
            job.progress(done, total, note)
        except (TypeError, ValueError) as exc:
            assert "job.progress(" in str(exc) and len(str(exc)) < 300, exc
            assert not sink, "refused: nothing kept"
            continue
        frame = protocol.encode_progress(sink)
        [(_, got_done, got_total, got_note)] = protocol.decode_progress(frame)
        assert got_done == float(done), (done, got_done)
        assert got_total == (float(total) if total else None), (total, got_total)
        assert len(got_note.encode()) <= MAX_NOTE


@pytest.mark.inprocess
def test_a_refused_report_fails_its_own_job_and_no_other():
    """Review #1: the other job was acknowledged twice, the big one ended dead."""
    import gevent

    from greenpipe import Handlers
    from greenpipe.config import WorkerSettings
    from greenpipe.worker import Worker
    from tests.support import ScriptedWeb, job_record

    handlers = Handlers()

    @handlers.job("big")
    def big(job):
        job.progress(10**400, 10)

    @handlers.job("plain")
    def plain(job):
        job.progress(1, 1)

    worker = Worker(WorkerSettings(port=0), handlers)
    sent: list[list[bytes]] = []
    worker._send = lambda ident, frames: sent.append(frames) or True  # type: ignore
    web = ScriptedWeb(worker)
    web.jobs(job_record(b"j-big", "big"), job_record(b"j-plain", "plain"))
    assert worker.pool.idle.wait(5)
    gevent.sleep(0)  # sleep-ok: the runs' greenlets end
    worker._flush()
    worker._beat(0.0)
    acks = [f for f in sent if f[0] == protocol.ACKS]
    assert len(acks) == 1 and acks[0][1] == b"j-plain", acks
    [(raw_id, status, payload)] = [protocol.decode_result(f) for f in acks[0][2:]]
    assert raw_id == b"j-big" and status == protocol.FAILED
    assert b"done=10000000000000000000..." in payload, payload


@pytest.mark.inprocess
def test_a_report_that_cannot_be_encoded_costs_the_reports_not_the_acks(caplog):
    """Belt and braces: should anything unpackable reach the worker's reports
    (a bug in the check), the heartbeat and the ACKS still go."""
    from greenpipe.config import WorkerSettings
    from greenpipe.worker import Worker
    from tests.support import ScriptedWeb

    worker = Worker(WorkerSettings(port=0), lambda job: None)
    sent: list[list[bytes]] = []
    worker._send = lambda ident, frames: sent.append(frames) or True  # type: ignore
    web = ScriptedWeb(worker)
    web.peer.progress[b"j-1"] = (10**400, 0, "")
    web.peer.progress_due = True
    web.peer.ok.append(b"j-1")
    worker._flush()
    assert [f[0] for f in sent[1:]] == [protocol.HEARTBEAT, protocol.ACKS], sent
    assert len(sent[1]) == 2, "the heartbeat went, without the reports"
    assert sent[2][1] == b"j-1" and not web.peer.progress
    assert "progress reports dropped" in caplog.text


@pytest.mark.inprocess
def test_inline_a_later_run_without_a_report_keeps_none():
    """Review #2: inline mode kept the failed first run's report."""
    from flask import Flask

    from greenpipe import Greenpipe, Handlers

    handlers = Handlers()

    @handlers.job("twice", retries=2, backoff=0.01)
    def twice(job):
        if job.attempt == 1:
            job.progress(7, 10, "first run")
            raise RuntimeError("flaky")
        return {"ok": True}

    app = Flask(__name__)
    app.testing = True
    pipe = Greenpipe(app, handlers=handlers)
    with app.app_context():
        status = pipe.status(pipe.push("twice", json={}).id)
    assert status["status"] == "done" and status["runs"] == 2
    assert "progress" not in status, status
