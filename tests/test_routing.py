"""Routing by job name and queue with real processes (issue 32, parts 2 and 3).

Three server.py workers run different names (tests/routing_handlers.py): A
only welcome_email, B both, C only ship_order; a real web pushes named jobs
(tests/retry_handlers.py's app: ``POST /jobs/<name>``). No job reaches a
worker that cannot run it; each name is split exactly among its workers;
after kill -9 of C, ship_order goes to B only and nothing is lost; a name no
worker runs is refused at once (503) naming it. Queues: workers with their
own QUEUES behind a plain web.py, jobs sent with ``Greenpipe-Queue``.
"""

from __future__ import annotations

import random
import signal
import time
from collections import Counter

from greenpipe.testing import read_records
from tests.support import handled_ids, poll_until

FAST = {"heartbeat": 0.25, "heartbeat_timeout": 1.5}  # quicker loss detection
SPARE = 1000  # credit per worker: more than the jobs pushed, so none is ever full


def test_each_name_goes_only_to_its_workers_round_robin(
    start_worker, start_app, record_dir
):
    spec = "tests.routing_handlers:"
    a, b, c = (start_worker(handler=spec + name, concurrency=SPARE)
               for name in ("welcome", "both", "shipping"))  # fmt: skip
    web = start_app([a, b, c], **FAST)
    stats = web.stats()
    assert [w["serves"] for w in stats["workers"]] == [
        {"names": ["welcome_email"], "default": False, "queues": ["default"]},
        {
            "names": ["ship_order", "welcome_email"],
            "default": False,
            "queues": ["default"],
        },
        {"names": ["ship_order"], "default": False, "queues": ["default"]},
    ], stats["workers"]

    rng = random.Random(32)
    named: dict[str, str] = {}  # job id -> its name
    for _ in range(300):  # one client: every worker has credit at each choice
        name = rng.choice(["welcome_email", "ship_order"])
        code, _, body = web.post(f"/jobs/{name}", {})
        assert code == 202, (code, body)
        named[body["id"]] = name
    stats = web.wait_settled()
    assert stats["failed"] == 0, f"a job reached a worker without its handler: {stats}"
    where = {job_id: port for port, entries in read_records(record_dir).items()
             for job_id, _ in entries}  # fmt: skip
    assert where.keys() == named.keys(), "every job handled, none twice"
    split = Counter((named[job_id], port) for job_id, port in where.items())
    capable = {"welcome_email": (a, b), "ship_order": (b, c)}
    for name, workers in capable.items():
        counts = [split[name, str(w.port)] for w in workers]
        assert max(counts) - min(counts) <= 1, f"{name}: {counts} over {workers}"
    assert sum(split.values()) == sum(
        split[name, str(w.port)] for name, ws in capable.items() for w in ws
    ), f"a job went to a worker that does not run its name: {split}"

    # kill -9 of C while it holds ship_order jobs: they and the new ones go to B.
    slow = [web.post("/jobs/ship_order", {"sleep": 0.5})[2]["id"] for _ in range(6)]
    poll_until(web.worker_stats, lambda ws: ws[2]["in_flight"] == 3, 10,
               "C holding its 3 slow ship_order jobs")  # fmt: skip
    c.proc.signal(signal.SIGKILL)
    web.wait_state(2, ["lost"], timeout=10)
    after = []
    for _ in range(60):
        code, _, body = web.post("/jobs/ship_order", {})
        assert code == 202, (code, body)
        after.append(body["id"])
    stats = web.wait_settled(30)
    assert stats["failed"] == 0 and stats["dead_lettered"] == 0, stats
    assert stats["workers"][2]["resent"] == 3, stats["workers"][2]
    handled = handled_ids(record_dir)
    assert set(slow + after) <= handled.keys(), "an accepted job was never handled"
    records = read_records(record_dir)
    on_b = {job_id for job_id, _ in records[str(b.port)]}
    assert set(after) <= on_b, "ship_order after the kill: B is its only worker"
    assert not set(after) & {job_id for job_id, _ in records[str(a.port)]}

    # A name no worker runs: 503 at once, naming it, with Retry-After.
    started = time.monotonic()
    code, headers, body = web.post("/jobs/ship_ordr", {})
    took = time.monotonic() - started
    assert code == 503 and "Retry-After" in headers, (code, headers, body)
    detail = str(body)
    assert "'ship_ordr'" in detail and "'ship_order'" in detail, detail
    assert took < 1.0, f"refused after {took:.2f} s, not at once"


def test_each_queue_goes_only_to_its_workers_and_a_lost_one_loses_nothing(
    start_worker, start_web, record_dir
):
    """A listens on the default queue, B on reports, C on both. Jobs sent
    with ``Greenpipe-Queue: reports`` go to B and C in turn, the others to A
    and C; kill -9 of B: its jobs are re-sent to C, later reports go to C
    only; nothing is lost. A queue nobody listens on: 503 naming it; a bad
    queue name: 400 naming it."""
    a = start_worker(concurrency=SPARE)
    b = start_worker(concurrency=SPARE, queues="reports")
    c = start_worker(concurrency=SPARE, queues="default,reports")
    web = start_web([a, b, c], **FAST)
    assert [w["serves"]["queues"] for w in web.worker_stats()] == [
        ["default"],
        ["reports"],
        ["default", "reports"],
    ]
    report = {"Greenpipe-Queue": "reports"}
    queued: dict[str, bool] = {}  # job id -> sent to reports
    for k in range(120):
        code, _, body = web.post("/jobs", {}, headers=report if k % 3 else {})
        assert code == 202, (code, body)
        queued[body["id"]] = bool(k % 3)
    web.wait_settled()
    records = read_records(record_dir)
    on = {port: {job_id for job_id, _ in entries} for port, entries in records.items()}
    reports = {job_id for job_id, is_report in queued.items() if is_report}
    plain = queued.keys() - reports
    assert on[str(b.port)] <= reports and on[str(a.port)] <= plain, "a queue crossed"
    for ids, workers in ((reports, (b, c)), (plain, (a, c))):
        counts = [len(ids & on[str(w.port)]) for w in workers]
        assert max(counts) - min(counts) <= 1 and sum(counts) == len(ids), counts

    slow = [
        web.post("/jobs", {"sleep": 0.5}, headers=report)[2]["id"] for _ in range(6)
    ]
    poll_until(web.worker_stats, lambda ws: ws[1]["in_flight"] == 3, 10,
               "B holding its 3 slow reports")  # fmt: skip
    b.proc.signal(signal.SIGKILL)
    web.wait_state(1, ["lost"], timeout=10)
    after = [web.post("/jobs", {}, headers=report)[2]["id"] for _ in range(30)]
    stats = web.wait_settled(30)
    assert stats["failed"] == 0 and stats["dead_lettered"] == 0, stats
    assert stats["workers"][1]["resent"] == 3, stats["workers"][1]
    assert set(slow + after) <= handled_ids(record_dir).keys(), "a 202 never handled"
    on_c = {job_id for job_id, _ in read_records(record_dir)[str(c.port)]}
    assert set(after) <= on_c, "reports after the kill: C is its only worker"
    assert stats["pending_by_queue"] == {"default": 0, "reports": 0}, stats

    code, headers, body = web.post("/jobs", {}, headers={"Greenpipe-Queue": "mail"})
    assert code == 503 and "Retry-After" in headers, (code, body)
    assert "no worker listens on queue 'mail'" in str(body), body
    code, _, body = web.post("/jobs", {}, headers={"Greenpipe-Queue": "re ports"})
    assert code == 400 and "'re ports'" in str(body), (code, body)
