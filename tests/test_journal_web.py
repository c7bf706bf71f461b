"""The journal in a running web: 202s that survive a kill -9 under a backlog,
a full disk (RLIMIT_FSIZE) answered 503 then recovered, and an Idempotency-Key
across a restart. Real processes.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections import Counter

import pytest

from tests.support import Load, poll_until, read_records


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
