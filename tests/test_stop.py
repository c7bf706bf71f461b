"""A web that stops owing jobs, and starts again: real processes, real signals.

Issue 25, items 1 and 7: the stop says where what is still owed went in one
true line, and the restart runs each replayed job as its next attempt.
"""

from __future__ import annotations

import signal

from greenpipe.testing import poll_until, read_records


def test_a_stop_owing_jobs_says_so_once_and_the_replay_is_the_next_attempt(
    start_worker, start_web, record_dir, tmp_path
):
    worker = start_worker()
    journal = tmp_path / "journal"
    web = start_web([worker], journal_dir=journal, drain_timeout=0.5)
    ids = [web.post("/jobs", {"sleep_first": 30})[2]["id"] for _ in range(2)]
    poll_until(lambda: web.stats()["in_flight"], lambda n: n == 2, 10,
               "both slow jobs in flight on the worker")  # fmt: skip
    web.proc.signal(signal.SIGTERM)
    assert web.proc.wait_exit(10) == 0
    said = web.proc.matches(r"unacknowledged|written to|replayed at the next start")
    lines = [m.string.strip() for m in said]
    assert len(lines) == 1, f"one line about what is owed, got {lines}"
    assert "2 jobs unacknowledged at stop stay in" in lines[0], lines
    assert not (tmp_path / "dead-letter.jsonl").exists(), "owed, not dead-lettered"

    again = start_web([worker], journal_dir=journal)
    again.proc.expect(r"replaying 2 jobs owed")

    def handled() -> dict[str, list[int]]:
        seen: dict[str, list[int]] = {}
        for entries in read_records(record_dir).values():
            for job_id, attempt in entries:
                seen.setdefault(job_id, []).append(attempt)
        return seen

    seen = poll_until(handled, lambda seen: all(i in seen for i in ids), 15,
                      "both jobs handled after the replay")  # fmt: skip
    assert {i: seen[i] for i in ids} == {i: [2] for i in ids}, (
        "the first run (still sleeping) was attempt 1: the replay is attempt 2"
    )


# -- issue 31, item 3: Pipe.close() right after push ---------------------------------

CLOSE_SCRIPT = """
from gevent import monkey

monkey.patch_all()

import json
import sys

from greenpipe import Pipe

worker, dead, drain, body = sys.argv[1:5]
pipe = Pipe(workers=[worker], journal_dir="off", dead_letter=dead,
            drain_timeout=float(drain))
pipe.start()
assert pipe.wait_ready(10), "the worker never said READY"
ids = [pipe.push("record", json=json.loads(body)).id for _ in range(4)]
pipe.close()  # at once: what it accepted is drained or dead-lettered
print("pushed", " ".join(ids), flush=True)
"""


def _push_four_then_close(worker, tmp_path, drain: float, body: str) -> list[str]:
    import subprocess

    from tests.support import PYTHON, ROOT

    script = tmp_path / "close_after_push.py"
    script.write_text(CLOSE_SCRIPT)
    done = subprocess.run(
        [PYTHON, str(script), worker.address, str(tmp_path / "dead.jsonl"),
         str(drain), body],
        capture_output=True, text=True, timeout=30, env={"PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.split("pushed ", 1)[1].split()


def test_pipe_close_right_after_push_drains_what_it_accepted(
    start_worker, record_dir, tmp_path
):
    from tests.support import handled_ids

    worker = start_worker()
    ids = _push_four_then_close(worker, tmp_path, 3.0, "{}")
    handled = handled_ids(record_dir)
    assert all(handled[i] == 1 for i in ids), (
        f"close() drains: each of the 4 jobs handled once, got {dict(handled)}"
    )
    assert not (tmp_path / "dead.jsonl").exists(), "all drained, none dead-lettered"


def test_pipe_close_right_after_push_dead_letters_what_it_could_not_drain(
    start_worker, tmp_path
):
    import json

    worker = start_worker()
    ids = _push_four_then_close(worker, tmp_path, 0.5, '{"sleep_first": 30}')
    dead = tmp_path / "dead.jsonl"
    assert dead.exists(), "4 jobs accepted, none drained: none dead-lettered either"
    records = [json.loads(line) for line in dead.read_text().splitlines()]
    assert sorted(r["id"] for r in records) == sorted(ids), records
