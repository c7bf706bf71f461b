"""Jobs that wait: a push with a delay, on the web's journaled timer (issue 20, part).

A real `Dispatcher` on scripted links and a fake clock (as tests/test_core.py),
a real `Journal` for the restart, and one real-process test over HTTP.
"""

from __future__ import annotations

import random
import signal
import time
from datetime import UTC, datetime, timedelta

import gevent
import pytest

from greenpipe import protocol
from greenpipe.errors import BadJob, Unavailable
from greenpipe.jobs import Envelope
from greenpipe.pipe import not_before
from greenpipe.testing import poll_until, read_records
from tests.support import read_runs
from tests.test_core import Clock, make, ready


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _delayed(d, seconds: float) -> Envelope:
    job = Envelope.new(b"POST", b"/jobs", b"", b"", b"{}")
    job.not_before = time.time() + seconds
    return d.submit(job)


def _sent_ids(link) -> list[str]:
    return [job.id for m in link.sent_messages if m[0] == protocol.JOBS
            for job in protocol.decode_jobs(m[1])]  # fmt: skip


def test_a_delayed_job_is_scheduled_then_sent_at_its_time_never_before(clock):
    d = make(clock, workers="127.0.0.1:1")
    link = d.links[0]
    ready(d, link)
    job = _delayed(d, 30.0)
    now = d.submit(Envelope.new(b"POST", b"/jobs", b"", b"", b"{}"))
    d.flush()
    assert _sent_ids(link) == [now.id], "the ordinary push goes at once"
    status = d.status(job.id)
    assert status["status"] == "scheduled", status
    assert status["due_at"] == pytest.approx(time.time() + 30, abs=1)
    clock.now += 29.9
    d.flush()
    assert job.id not in _sent_ids(link), "not before its time"
    clock.now += 0.2
    d.flush()
    assert _sent_ids(link)[-1] == job.id
    assert d.status(job.id)["status"] == "in_flight"


def test_max_scheduled_is_a_cap_of_its_own(clock):
    d = make(clock, workers="127.0.0.1:1", max_scheduled=2, max_pending=1)
    ready(d, d.links[0], credit=1)
    _delayed(d, 60)
    _delayed(d, 60)
    with pytest.raises(Unavailable, match="MAX_SCHEDULED=2"):
        _delayed(d, 60)
    assert d.books.rejected_by == {"max_scheduled": 1}
    d.submit(Envelope.new(b"POST", b"/jobs", b"", b"", b"{}"))  # not counted there
    assert d.cancel(next(iter(d.later)).id)["status"] == "cancelled"


def test_delay_and_at_are_checked_naming_what_is_wrong():
    assert not_before(None, None, 3600) == 0.0
    assert not_before(0, None, 3600) == 0.0, "a delay of 0 is an ordinary push"
    assert not_before(10, None, 3600) == pytest.approx(time.time() + 10, abs=0.5)
    soon = datetime.now(UTC) + timedelta(seconds=20)
    assert not_before(None, soon, 3600) == pytest.approx(soon.timestamp(), abs=0.01)
    with pytest.raises(BadJob, match="not both"):
        not_before(1, soon, 3600)
    with pytest.raises(BadJob, match="over MAX_DELAY"):
        not_before(7200, None, 3600)
    with pytest.raises(BadJob, match="not an aware datetime"):
        not_before(None, datetime.now(), 3600)  # noqa: DTZ005 (naive, on purpose)
    with pytest.raises(BadJob, match="not a number of seconds"):
        not_before(-1, None, 3600)


def test_a_delayed_job_survives_a_restart_and_is_not_run_early(clock, tmp_path):
    journal = tmp_path / "journal"
    d = make(clock, workers="127.0.0.1:1", journal_dir=journal)
    d.start()
    try:
        ready(d, d.links[0])
        waiting = gevent.spawn(_delayed, d, 30.0)
        gevent.sleep(
            0
        )  # sleep-ok: an idle yield, not a wait (parked on its group: the dispatcher writes it)
        d.flush()
        waiting.join(5)
        assert waiting.successful(), waiting.exception
    finally:
        d.close()  # nothing more written: as kill -9 would leave it
    again = make(clock, workers="127.0.0.1:1", journal_dir=journal)
    again.start()
    try:
        assert [job.id for job in again.later] == [waiting.value.id]
        assert not again._fresh, "not run early"
        assert again.status(waiting.value.id)["status"] == "scheduled"
    finally:
        again.close()


def test_a_delay_over_http_runs_the_job_after_its_time(start_worker, start_web,
                                                       record_dir):  # fmt: skip
    web = start_web([start_worker()])
    code, _, body = web.request("POST", "/jobs", "{}", {
        "Content-Type": "application/json", "Greenpipe-Delay": "1.5"})  # fmt: skip
    accepted = time.time()
    assert code == 202, body
    assert web.get(f"/jobs/{body['id']}")[2]["status"] == "scheduled"
    poll_until(lambda: read_records(record_dir),
               lambda seen: any(job_id == body["id"] for entries in seen.values()
                                for job_id, _ in entries), 10,
               "the delayed job handled")  # fmt: skip
    assert time.time() - accepted >= 1.5 - 0.05, "never early"
    code, headers, later = web.request("POST", "/jobs", "{}", {
        "Content-Type": "application/json", "Greenpipe-Delay": "60",
        "Prefer": "wait=5"})  # fmt: skip
    assert code == 202 and "Preference-Applied" not in headers, (code, later)
    assert web.get(f"/jobs/{later['id']}")[2]["status"] == "scheduled"
    bad = web.request("POST", "/jobs", "{}", {"Content-Type": "application/json",
                                              "Greenpipe-Delay": "soon"})  # fmt: skip
    assert bad[0] == 400 and "Greenpipe-Delay: 'soon'" in bad[2]["detail"], bad


def test_a_repeated_key_with_prefer_wait_on_a_scheduled_job_answers_202(
    start_worker, start_web
):
    """Issue 30: the repeat answered 502 "given up" for a job only scheduled."""
    web = start_web([start_worker()])
    first = {"Content-Type": "application/json", "Greenpipe-Delay": "60",
             "Idempotency-Key": "scheduled-once"}  # fmt: skip
    code, _, body = web.request("POST", "/jobs", "{}", first)
    assert code == 202, body
    for delay in ({}, {"Greenpipe-Delay": "60"}):  # the repeat with or without it
        again = {**first, "Prefer": "wait=2", **delay}
        if not delay:
            del again["Greenpipe-Delay"]
        started = time.monotonic()
        code, headers, repeat = web.request("POST", "/jobs", "{}", again)
        assert (code, repeat.get("id")) == (202, body["id"]), (code, repeat)
        assert "Preference-Applied" not in headers, headers
        assert time.monotonic() - started < 1.5, "at once: nothing to wait for"
    assert web.get(f"/jobs/{body['id']}")[2]["status"] == "scheduled"


def test_kill_9_while_1000_delayed_jobs_wait_each_runs_at_its_time(
    start_worker, start_app, record_dir, tmp_path
):
    worker = start_worker(handler="tests.retry_handlers:handlers")
    journal = tmp_path / "journal"
    web = start_app([worker], journal_dir=journal)
    rng = random.Random(20)
    start = time.time() + 2.0  # all still waiting at the kill
    dues = [start + rng.uniform(0, 3) for _ in range(1000)]
    code, _, body = web.post("/later/quick", {"dues": dues}, timeout=30)
    assert code == 202, body
    due_of = dict(zip(body["ids"], dues, strict=True))
    assert web.stats()["waiting"] == 1000
    assert time.time() < start, "the pushes took too long: some are due already"
    web.proc.signal(signal.SIGKILL)
    web.proc.wait_exit(5)
    start_app([worker], journal_dir=journal)
    runs = poll_until(lambda: read_runs(record_dir),
                      lambda r: len(r.keys() & due_of.keys()) == 1000, 30,
                      "all 1,000 delayed jobs run after the restart")  # fmt: skip
    early = {job_id: due_of[job_id] - r[0]["t"] for job_id, r in runs.items()
             if r[0]["t"] < due_of[job_id]}  # fmt: skip
    assert not early, f"{len(early)} ran before their time (s early): {early}"
    twice = {job_id: len(r) for job_id, r in runs.items() if len(r) > 1}
    assert not twice, f"none was sent before the kill, yet these ran twice: {twice}"
