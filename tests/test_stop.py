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
