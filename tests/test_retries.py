"""Retries with backoff, time limits that hold, cancellation (issue 19).

The handler's side in microseconds (`run_handler` and a `Policy`), the web's
side with a real `Dispatcher` on scripted links and a fake clock (as
tests/test_core.py), and a few real processes for what only processes show:
a retry that waits across `kill -9` of the web, a handler that swallows its
time limit, a running job cancelled.
"""

from __future__ import annotations

import json
import math
import signal
import time

import gevent
import pytest

from greenpipe import Cancelled, Handlers, JobTimeout, Retry, protocol
from greenpipe.config import WorkerSettings
from greenpipe.handling import Policy, run_handler
from greenpipe.jobs import Envelope, Job, Status
from greenpipe.testing import poll_until
from greenpipe.worker import Worker
from tests.support import ScriptedWeb, job_record, read_records, read_runs
from tests.test_core import Clock, ack, hear, make, ready

# -- the handler's side ---------------------------------------------------------


def _job(retries: int = 0, name: str = "flaky", timeout: float = 0.0) -> Job:
    return Job(b"r-1", retries + 1, "", "", "", "", b"{}", timeout, name=name,
               retries=retries)  # fmt: skip


def test_a_policy_retries_a_failure_until_its_retries_are_spent():
    policy = Policy(retries=2, backoff=1.0, max_backoff=3.0, jitter=False)

    def failing(job):
        raise ValueError("upstream down")

    delays = []
    for retries in (0, 1):
        status, payload = run_handler(failing, _job(retries), "w", policy)
        assert status == protocol.RETRY
        delay, error = protocol.decode_retry(payload)
        delays.append(delay)
        assert error == b"ValueError: upstream down"
    assert delays == [1.0, 2.0], "exponential: backoff, then twice"
    assert run_handler(failing, _job(2), "w", policy)[0] == protocol.FAILED
    assert Policy(retries=9, backoff=1, max_backoff=3, jitter=False).delay(5) == 3


def test_full_jitter_stays_within_the_backoff():
    policy = Policy(retries=5, backoff=0.5, max_backoff=10.0)
    for retries in range(5):
        ceiling = min(10.0, 0.5 * 2**retries)
        draws = [policy.delay(retries) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in draws), (retries, max(draws))
        assert max(draws) > ceiling / 2, "spread over the whole range"


def test_retry_on_filters_and_retry_after_is_honoured():
    policy = Policy(retries=3, retry_on=(ConnectionError,))

    def wrong_kind(job):
        raise KeyError("a bug, not an outage")

    assert run_handler(wrong_kind, _job(), "w", policy)[0] == protocol.FAILED

    def asks(job):
        raise Retry(after=42.5)

    status, payload = run_handler(asks, _job(), "w", Policy())
    assert status == protocol.RETRY and protocol.decode_retry(payload)[0] == 42.5
    spent = _job(retries=3)  # Retry without a policy: 3 retries by default
    assert run_handler(asks, spent, "w", Policy())[0] == protocol.FAILED
    assert run_handler(asks, _job(), "w", Policy(timeout=5))[0] == protocol.RETRY, (
        "retries not declared: Retry still gets its 3"
    )
    assert run_handler(asks, _job(), "w", Policy(retries=0))[0] == protocol.FAILED, (
        "retries=0 declared: Retry is final too"
    )
    with pytest.raises(ValueError, match="seconds >= 0"):
        Retry(after=-1)


def test_a_time_limit_is_not_swallowed_by_except_exception():
    def careless(job):
        try:
            gevent.sleep(5)  # sleep-ok: the handler's work (cancelled or timed out)
        except Exception:  # what a handler wraps its work in
            return "swallowed"
        return "ran on"

    started = time.monotonic()
    status, payload = run_handler(careless, _job(timeout=0.05), "w", bounded=True)
    assert status == protocol.FAILED and b"exceeded 0.05 s" in payload
    assert time.monotonic() - started < 2
    assert issubclass(JobTimeout, BaseException) and not issubclass(
        JobTimeout, Exception
    )
    assert issubclass(Cancelled, BaseException) and not issubclass(Cancelled, Exception)


def test_handlers_declare_their_policy_beside_themselves():
    handlers = Handlers()

    @handlers.job("mail", retries=4, backoff=2, timeout=9)
    def mail(job):
        return None

    assert handlers.policy("mail") == Policy(retries=4, backoff=2, timeout=9)
    assert handlers.policy("other") == Policy(), "defaults: no retries"
    with pytest.raises(ValueError, match="retries=-1"):
        handlers.job("bad", retries=-1)
    with pytest.raises(TypeError, match="not an exception class"):
        handlers.job("bad", retries=1, retry_on=("ValueError",))


# -- the web's side, scripted -----------------------------------------------------


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _result(link, job_id: str, status: int, payload: bytes = b"") -> list[bytes]:
    return protocol.encode_acks([], [protocol.encode_result(job_id.encode(), status,
                                                            payload)])  # fmt: skip


def _retry(d, link, job_id: str, delay: float, error: bytes = b"E: boom") -> None:
    payload = protocol.retry_payload(delay, error)
    hear(d, link, _result(link, job_id, protocol.RETRY, payload))


def _sent(link) -> list[Job]:
    return [job for m in link.sent_messages if m[0] == protocol.JOBS
            for job in protocol.decode_jobs(m[1])]  # fmt: skip


def _submit(d) -> Envelope:
    return d.submit(Envelope.new(b"POST", b"/jobs", b"", b"", b"{}"))


def test_a_retry_waits_its_time_then_goes_out_as_the_next_run(clock):
    d = make(clock, workers="127.0.0.1:1")
    link = d.links[0]
    ready(d, link)
    job = _submit(d)
    d.flush()
    _retry(d, link, job.id, 5.0)
    status = d.status(job.id)
    assert status["status"] == "retrying" and status["error"] == "E: boom", status
    assert status["next_at"] == pytest.approx(time.time() + 5, abs=1)
    assert d.books.retried == 1 and d.snapshot().waiting == 1
    clock.now += 4.9
    d.flush()
    assert len(_sent(link)) == 1, "not before its time"
    clock.now += 0.2
    d.flush()
    again = _sent(link)[-1]
    assert (again.id, again.attempt, again.retries) == (job.id, 2, 1)
    ack(d, link, job.id)
    assert d.status(job.id)["status"] == "done" and d.status(job.id)["runs"] == 2


def test_a_failure_after_retries_is_dead_lettered_with_its_errors(clock, tmp_path):
    d = make(clock, workers="127.0.0.1:1")
    d.dead_letters.path = str(tmp_path / "dead.jsonl")
    link = d.links[0]
    ready(d, link)
    job = _submit(d)
    d.flush()
    _retry(d, link, job.id, 0.0, b"E: first")
    d.flush()
    hear(d, link, _result(link, job.id, protocol.FAILED, b"E: second"))
    record = d.status(job.id)
    assert record["status"] == "dead" and record["runs"] == 2, record
    (line,) = (tmp_path / "dead.jsonl").read_text().splitlines()
    dead = json.loads(line)
    assert dead["errors"] == ["E: first", "E: second"] and dead["runs"] == 2


def test_max_deliveries_bounds_the_deliveries_of_one_run_not_all_runs(clock):
    d = make(clock, workers="127.0.0.1:1,127.0.0.1:2", max_deliveries=2)
    a, b = d.links
    ready(d, a)
    ready(d, b)
    job = _submit(d)
    d.flush()
    holder = a if a.jobs else b
    _retry(d, holder, job.id, 0.0)
    d.flush()  # run 2, delivery 1
    holder = a if a.jobs else b
    d._lose(holder, "killed")  # run 2, delivery 2 follows: not dead yet
    assert d.status(job.id)["status"] == "queued"


def test_cancel_queued_waiting_running_finished_unknown(clock):
    d = make(clock, workers="127.0.0.1:1")
    link = d.links[0]
    ready(d, link, credit=1)
    running, queued = _submit(d), _submit(d)
    d.flush()  # credit 1: one runs, one waits in the queue
    assert d.cancel(queued.id)["status"] == "cancelled"
    assert d.cancel(queued.id)["status"] == "cancelled", "idempotent"
    found = d.cancel(running.id)
    assert found["status"] == "in_flight" and found["cancelling"], found
    assert link.sent_messages[-1] == protocol.encode_cancel([running.key])
    d.cancel(running.id)
    assert link.kinds().count(protocol.CANCEL) == 1, "one CANCEL is enough"
    hear(d, link, _result(link, running.id, protocol.CANCELLED, b"cancelled"))
    assert d.status(running.id)["status"] == "cancelled"
    waiting = _submit(d)
    d.flush()
    _retry(d, link, waiting.id, 60.0)
    assert d.cancel(waiting.id)["status"] == "cancelled"
    clock.now += 61
    d.flush()
    assert waiting.id not in [job.id for job in _sent(link)[2:]], "never runs"
    done = _submit(d)
    d.flush()
    ack(d, link, done.id)
    assert d.cancel(done.id)["status"] == "done", "finished: nothing changes"
    assert d.cancel("nobody-0000000001") is None
    assert d.books.cancelled == 3


def test_a_job_cancelled_while_it_waits_to_run_again_counts_its_runs(clock):
    """A fresh eye's finding: it said runs 2 and "before it ran" after one run."""
    d = make(clock, workers="127.0.0.1:1")
    link = d.links[0]
    ready(d, link)
    ran, never = _submit(d), _submit(d)
    d.flush()
    _retry(d, link, ran.id, 60.0)
    record = d.cancel(ran.id)
    assert (record["runs"], record["reason"]) == (1, "cancelled before it ran again")
    ack(d, link, never.id)
    queued = _submit(d)  # not flushed: never delivered
    record = d.cancel(queued.id)
    assert (record["runs"], record["reason"]) == (0, "cancelled before it ran")


def test_inline_mode_holds_a_handlers_own_time_limit():
    """A fresh eye's finding: inline, timeout= was ignored (JOB_TIMEOUT held)."""
    from flask import Flask

    from greenpipe import Greenpipe

    handlers = Handlers()
    seen = []

    @handlers.job("slow", timeout=0.2)
    def slow(job):
        seen.append(job.timeout)
        try:
            gevent.sleep(5)  # sleep-ok: the handler's work (cancelled or timed out)
        except Exception:  # noqa: BLE001 (careless on purpose)
            return "swallowed"
        return "ran on"

    app = Flask("inline_limits")
    app.config.update(TESTING=True)
    pipe = Greenpipe(app, handlers=handlers)
    started = time.monotonic()
    with app.app_context():
        outcome = pipe.push("slow", json={}, wait=1)
    assert seen == [0.2] and time.monotonic() - started < 2
    assert outcome.status == "failed" and "exceeded 0.2 s" in outcome.error, outcome


def test_a_cancelled_retry_is_not_retried_and_a_lost_one_not_resent(clock):
    d = make(clock, workers="127.0.0.1:1,127.0.0.1:2")
    for link in d.links:
        ready(d, link)
    first, second = _submit(d), _submit(d)
    d.flush()
    a, b = d.links
    d.cancel(first.id)
    _retry(d, a, first.id, 0.0)  # the run failed before the CANCEL landed
    assert d.status(first.id)["status"] == "cancelled" and not len(d.later)
    d.cancel(second.id)
    d._lose(b, "killed")
    assert d.status(second.id)["status"] == "cancelled" and not d._retry


def test_a_job_cancelled_on_a_worker_that_is_lost_is_not_counted_dead(clock, caplog):
    """Issue 30: the web said "1 dead-lettered" for it; nothing was dead-lettered."""
    d = make(clock, workers="127.0.0.1:1,127.0.0.1:2")
    for link in d.links:
        ready(d, link)
    frozen, _ = _submit(d), _submit(d)
    d.flush()
    holder = next(link for link in d.links if frozen.key in link.jobs)
    d.cancel(frozen.id)  # in flight: CANCEL sent, then the worker froze
    with caplog.at_level("WARNING", logger="greenpipe"):
        d._lose(holder, "no heartbeat for 3.0 s")
    assert d.status(frozen.id)["status"] == "cancelled"
    assert d.dead_letters.count == 0
    lost = [r.getMessage() for r in caplog.records if "lost" in r.getMessage()]
    assert lost and "0 dead-lettered, 1 cancelled" in lost[-1], lost


def test_a_waiting_retry_and_a_cancel_survive_a_restart(clock, tmp_path):
    journal = tmp_path / "journal"
    d = make(clock, workers="127.0.0.1:1", journal_dir=journal)
    d.start()
    try:
        ready(d, d.links[0])
        jobs = [gevent.spawn(_submit, d) for _ in range(2)]
        gevent.sleep(0)  # sleep-ok: an idle yield, not a wait
        d.flush()
        gevent.joinall(jobs, timeout=5, raise_error=True)
        waits, cancelled = (job.value for job in jobs)
        d.flush()
        _retry(d, d.links[0], waits.id, 30.0)
        d.cancel(cancelled.id)  # in flight: the worker is told
        hear(d, d.links[0], _result(d.links[0], cancelled.id,
                                    protocol.CANCELLED, b"cancelled"))  # fmt: skip
    finally:
        d.close()  # nothing written after this: as kill -9 would leave it
    again = make(clock, workers="127.0.0.1:1", journal_dir=journal)
    again.start()
    try:
        assert [job.id for job in again.later] == [waits.id], "waits on"
        assert not again._fresh, "nothing to run now: not early, not cancelled"
        job = again.later.get(waits.id)
        assert job.retries == 1 and job.not_before > time.time() + 25
    finally:
        again.close()


# -- real processes -----------------------------------------------------------------

HANDLERS = "tests.retry_handlers:handlers"


def test_a_flaky_handler_runs_k_plus_1_times_within_its_backoff(
    start_worker, start_app, record_dir
):
    worker = start_worker(handler=HANDLERS)
    web = start_app([worker])
    code, _, body = web.post("/jobs/flaky", {"fail": 2})
    assert code == 202
    job_id = body["id"]
    runs = poll_until(lambda: read_runs(record_dir).get(job_id, []),
                      lambda r: len(r) == 3, 15, "three runs of the flaky job")  # fmt: skip
    gaps = [b["t"] - a["t"] for a, b in zip(runs, runs[1:], strict=False)]
    # backoff 0.2 s, full jitter: at most 0.2 s, then 0.4 s (plus a heartbeat)
    assert gaps[0] <= 0.2 + 0.6 and gaps[1] <= 0.4 + 0.6, gaps
    assert [r["attempt"] for r in runs] == [1, 2, 3]
    done = poll_until(lambda: web.get(f"/jobs/{job_id}")[2],
                      lambda s: s.get("status") == "done", 10, "done after retries")  # fmt: skip
    assert done["runs"] == 3, done
    assert web.stats()["retried"] == 2


def test_a_retry_pending_at_kill_9_of_the_web_runs_at_its_time_after_restart(
    start_worker, start_app, record_dir, tmp_path
):
    worker = start_worker(handler=HANDLERS)
    journal = tmp_path / "journal"
    web = start_app([worker], journal_dir=journal)
    job_id = web.post("/jobs/later", {"after": 3})[2]["id"]
    poll_until(lambda: web.stats()["waiting"], lambda n: n == 1, 10,
               "the job waiting for its retry")  # fmt: skip
    first = read_runs(record_dir)[job_id][0]["t"]
    web.proc.signal(signal.SIGKILL)
    web.proc.wait_exit(5)
    start_app([worker], journal_dir=journal)
    runs = poll_until(lambda: read_runs(record_dir).get(job_id, []),
                      lambda r: len(r) == 2, 15, "the retry after the restart")  # fmt: skip
    assert runs[1]["t"] - first >= 3.0 - 0.05, "never early"
    assert runs[1]["retries"] == 1


def test_a_handler_swallowing_exception_is_stopped_at_its_limit(
    start_worker, start_app, record_dir
):
    worker = start_worker(handler=HANDLERS, concurrency=1)
    web = start_app([worker])
    stuck = web.post("/jobs/swallow", {})[2]["id"]
    after = web.post("/jobs/quick", {})[2]["id"]
    runs = poll_until(lambda: read_runs(record_dir), lambda r: after in r, 10,
                      "the next job ran: the slot was freed")  # fmt: skip
    assert stuck not in runs, (
        f"it neither caught the limit nor ran on: {runs.get(stuck)}"
    )
    failed = poll_until(lambda: web.get(f"/jobs/{stuck}")[2],
                        lambda s: s.get("status") == "failed", 10, "reported failed")  # fmt: skip
    assert "exceeded 0.5 s" in failed["error"], failed


def test_a_running_job_is_cancelled_over_http(start_worker, start_app, record_dir):
    worker = start_worker(handler=HANDLERS)
    web = start_app([worker])
    job_id = web.post("/jobs/long", {})[2]["id"]
    poll_until(lambda: read_runs(record_dir), lambda r: job_id in r, 10, "it started")
    assert web.request("DELETE", f"/jobs/{job_id}")[0] == 403, "the header is needed"
    code, _, body = web.request("DELETE", f"/jobs/{job_id}",
                                headers={"X-Greenpipe-Action": "cancel"})  # fmt: skip
    assert code == 202 and body["cancelling"], body
    runs = poll_until(lambda: read_runs(record_dir)[job_id], lambda r: len(r) == 2, 10,
                      "the handler saw Cancelled")  # fmt: skip
    assert runs[1]["event"] == "cancelled"
    status = poll_until(lambda: web.get(f"/jobs/{job_id}")[2],
                        lambda s: s.get("status") == "cancelled", 10, "cancelled")  # fmt: skip
    assert status["status"] == "cancelled"
    code, _, again = web.request("DELETE", f"/jobs/{job_id}",
                                 headers={"X-Greenpipe-Action": "cancel"})  # fmt: skip
    assert code == 200 and again["status"] == "cancelled", "idempotent"
    code, _, unknown = web.request("DELETE", "/jobs/nobody-0000000001",
                                   headers={"X-Greenpipe-Action": "cancel"})  # fmt: skip
    assert code == 404, unknown
    quick = web.post("/jobs/quick", {})[2]["id"]
    poll_until(lambda: web.get(f"/jobs/{quick}")[2], lambda s: s.get("status") == "done",
               10, "the quick job done")  # fmt: skip
    code, _, finished = web.request("DELETE", f"/jobs/{quick}",
                                    headers={"X-Greenpipe-Action": "cancel"})  # fmt: skip
    assert code == 409 and finished["job"]["status"] == "done", finished


def test_retries_setting_gives_the_stock_handler_a_policy(start_worker, start_web,
                                                          record_dir):  # fmt: skip
    worker = start_worker(retries=2, retry_backoff=0.1)
    web = start_web([worker])
    job_id = web.post("/jobs", {"fail": "upstream down"})[2]["id"]
    dead = poll_until(lambda: web.get(f"/jobs/{job_id}")[2],
                      lambda s: s.get("status") == "dead", 15,
                      "dead after the RETRIES=2 retries")  # fmt: skip
    assert dead["runs"] == 3, dead
    runs = [a for entries in read_records(record_dir).values() for i, a in entries
            if i == job_id]  # fmt: skip
    assert sorted(runs) == [1, 2, 3], runs
    ok = web.post("/jobs", {})[2]["id"]
    assert poll_until(lambda: web.get(f"/jobs/{ok}")[2], lambda s: s.get("status")
                      == "done", 10, "a job that does not fail: done")["runs"] == 1  # fmt: skip


def test_a_handlers_limit_longer_than_job_timeout_does_not_lose_its_worker(
    start_worker, start_app, record_dir
):
    """Issue 30: the web's backstop used 2 x JOB_TIMEOUT + HEARTBEAT_TIMEOUT (3 s)
    for a handler declaring timeout=8, lost the worker twice, and re-sent the job."""
    worker = start_worker(handler=HANDLERS)
    web = start_app([worker], job_timeout=1, heartbeat=0.25, heartbeat_timeout=1)
    job_id = web.post("/jobs/patient", {"work": 5})[2]["id"]
    done = poll_until(lambda: web.get(f"/jobs/{job_id}")[2],
                      lambda s: Status(s.get("status", "queued")).finished, 15,
                      "the 5 s job finished")  # fmt: skip
    assert (done["status"], done["attempt"]) == ("done", 1), done
    assert not web.proc.matches("not acknowledged within"), web.proc.tail()
    assert [r["event"] for r in read_runs(record_dir)[job_id]] == ["started", "ran"]


# -- the worker's side: a real Worker fed by a scripted web ------------------------


def test_a_declared_retries_0_is_the_handlers_policy_not_the_workers():
    """Issue 30: ``retries=0`` equalled "no policy", so RETRIES=3 ran it 4 times."""
    handlers = Handlers()

    @handlers.job("charge", retries=0)
    def charge(job):
        raise ConnectionError("card declined")

    @handlers.job("undeclared")
    def undeclared(job):
        raise ConnectionError("upstream down")

    worker = Worker(WorkerSettings(port=0, retries=3), handlers)
    web = ScriptedWeb(worker)
    web.jobs(job_record(b"c-1", "charge"))
    [(_, status, payload)] = web.results(1)
    assert (status, payload) == (protocol.FAILED, b"ConnectionError: card declined")
    web.jobs(job_record(b"u-1", "undeclared"))
    [(_, status, _)] = web.results(1)
    assert status == protocol.RETRY, "a handler declaring nothing gets RETRIES"


DAY = 86400.0


def test_a_retry_beyond_49_days_waits_its_whole_time_within_max_delay(clock):
    """Issue 30: a delay travelled as u32 ms, so 60 days came due 10.3 days early."""
    d = make(clock, workers="127.0.0.1:1", max_delay=100 * DAY)
    link = d.links[0]
    ready(d, link)
    job = _submit(d)
    d.flush()
    _retry(d, link, job.id, 60 * DAY)
    status = d.status(job.id)
    assert status["status"] == "retrying", status
    assert status["next_at"] == pytest.approx(time.time() + 60 * DAY, abs=5), (
        f"due in {(status['next_at'] - time.time()) / DAY:.1f} days, not 60"
    )


def test_a_retry_beyond_max_delay_is_refused_visibly_never_early(
    clock, tmp_path, caplog
):
    d = make(clock, workers="127.0.0.1:1")  # MAX_DELAY: 7 days
    d.dead_letters.path = str(tmp_path / "dead.jsonl")
    link = d.links[0]
    ready(d, link)
    job = _submit(d)
    d.flush()
    _retry(d, link, job.id, 60 * DAY, b"E: come back in two months")
    record = d.status(job.id)
    assert record["status"] == "dead", record
    assert "beyond MAX_DELAY" in record["reason"], record
    assert "E: come back in two months" in record["reason"], record
    assert d.snapshot().waiting == 0
    assert "beyond MAX_DELAY" in caplog.text
    assert "beyond MAX_DELAY" in (tmp_path / "dead.jsonl").read_text()


def test_retries_and_backoff_are_bounded_where_they_are_declared():
    """retries and attempt travel as 16 bits: 65,536 retries never reached the wire."""
    with pytest.raises(ValueError, match=r"retries=65536: .*at most 255"):
        Policy(retries=65536)
    with pytest.raises(ValueError, match=r"max_backoff=.*at most 31622400"):
        Policy(backoff=1, max_backoff=400 * DAY)
    Policy(retries=255, max_backoff=366 * DAY)  # the limits themselves are fine


def test_a_job_lost_after_a_retry_says_its_run_and_delivery_apart(clock):
    """Issue 30: it said "attempt 5 of 3", attempts counting every run's deliveries."""
    d = make(clock, workers="127.0.0.1:1")  # MAX_ATTEMPTS: 3
    link = d.links[0]
    ready(d, link)
    job = _submit(d)
    d.flush()
    _retry(d, link, job.id, 0.0)  # run 1 failed; run 2 follows
    for _ in range(3):
        d.flush()
        d._lose(link, "killed")
        ready(d, link)
    record = d.status(job.id)
    assert record["status"] == "dead", record
    assert "run 2, delivery 3 of 3 (MAX_DELIVERIES)" in record["reason"], record


@pytest.mark.parametrize("timeout", [math.inf, math.nan, -1.0, 0.0])
def test_a_timeout_must_be_finite_seconds_the_web_can_follow(timeout):
    """Review of issue 30: timeout=inf was accepted, announced in READY, and the
    web refused that READY as malformed: the worker never joined, every push
    got a 503. Refused where it is declared, naming the value."""
    with pytest.raises(ValueError, match=r"timeout=.*: finite seconds > 0, or None"):
        Policy(timeout=timeout)
    with pytest.raises(ValueError, match=r"finite seconds > 0"):
        Handlers().job("forever", timeout=timeout)


@pytest.mark.parametrize("timeout", [1e-3, 0.5, 8, 86400.0, 1e12])
def test_every_timeout_a_policy_accepts_travels_in_ready(timeout):
    """What a worker may announce, the web reads back: no READY is malformed."""
    Policy(timeout=timeout)
    frames = protocol.encode_ready(10, 1 << 20, "w", limits={"job": timeout})
    assert protocol.decode_limits(frames) == {b"job": timeout}
