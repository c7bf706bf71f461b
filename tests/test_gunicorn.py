"""web.py under gunicorn's gevent worker, K processes (greenpipe.gunicorn config).

Real processes: gunicorn's master forks K workers; each starts its own pipe
after the fork (never the master), meets its barrier, takes requests, and
drains when gunicorn stops it.
"""

from __future__ import annotations

import re
import signal

from tests.support import Load, handled_ids, poll_until


def test_gunicorn_gevent_workers_each_run_a_pipe_after_the_fork(
    start_worker, start_gunicorn, record_dir
):
    workers = [start_worker() for _ in range(3)]
    gunicorn, port = start_gunicorn(workers)
    master = int(gunicorn.expect(r"\[(\d+)\] \[INFO\] Starting gunicorn")[1])
    started = gunicorn.expect(r"pipe started in pid (\d+)", 20, times=2)
    pids = {int(m[1]) for m in gunicorn.matches(r"pipe started in pid (\d+)")}
    assert len(pids) == 2 and master not in pids and started, (master, pids)
    gunicorn.expect("barrier met", 20, times=2)

    load = Load(port, total=600, concurrency=16, payload={}).join(60)
    assert load.statuses() == {202: 600}, (load.statuses(), load.errors[:3])
    prefixes = {job_id.rsplit("-", 1)[0] for job_id in load.accepted_ids()}
    assert len(prefixes) == 2, f"both gunicorn workers took requests: {prefixes}"
    poll_until(lambda: handled_ids(record_dir).keys(),
               lambda ids: ids >= load.accepted_ids(), 20, "600 handled")  # fmt: skip

    gunicorn.signal(signal.SIGTERM)
    assert gunicorn.wait_exit(30) == 0
    stopped = gunicorn.matches(r"web: stopped|stopped; accepted|pipe .*drain")
    assert not gunicorn.matches(r"jobs unacknowledged at exit"), gunicorn.tail()
    summaries = gunicorn.matches(r"gunicorn worker (\d+): stopped; accepted (\d+)")
    assert {int(m[1]) for m in summaries} == pids, gunicorn.tail(40)  # one each
    assert sum(int(m[2]) for m in summaries) == 600, [m[0] for m in summaries]
    assert re.search(r"Shutting down: Master", gunicorn.tail(40)), stopped
