"""Journal slots adopted while running, lookups after a crash, a journal that
knows its web (issues 30-31). Real processes: WEB_PROCESSES, gunicorn, kill -9.

Jobs wait (``Greenpipe-Delay``) across a rolling restart or a crash; the
workers' records say whether each ran, and a sentinel job due after a
cancelled one says when the cancelled one's time has passed.
"""

from __future__ import annotations

import fcntl
import os
import signal
import time
from pathlib import Path

from greenpipe.testing import Proc, Web, entry, flags, ports_in_a_row
from tests.support import handled_ids, poll_until


def _post_delayed(web: Web, count: int, delay: float) -> list[str]:
    """`count` jobs waiting `delay` s, each on a new connection (spread by the kernel)."""
    ids = []
    for i in range(count):
        code, _, body = web.post("/jobs", {"n": i},
                                 headers={"Greenpipe-Delay": f"{delay:g}"})  # fmt: skip
        assert code == 202, (code, body)
        ids.append(body["id"])
    prefixes = {job_id.rsplit("-", 1)[0] for job_id in ids}
    assert len(prefixes) == 2, f"both processes took jobs (p 2**-{count - 1}): {ids}"
    return ids


def _all_run(record_dir, ids: list[str], by: float, what: str) -> None:
    """Wait until the workers' records hold every one of `ids`, until `by`."""
    poll_until(lambda: set(ids) - handled_ids(record_dir).keys(),
               lambda missing: not missing, max(by - time.monotonic(), 1.0), what)  # fmt: skip


def _unheld_with_segments(journal: Path) -> list[str]:
    """Slot folders holding segments whose lock no process holds: owed, unheld."""
    unheld = []
    for folder in journal.glob("slot-*"):
        if folder.is_dir() and list(folder.glob("seg-*")):
            with open(journal / f"{folder.name}.lock", "rb") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # held: a running process owns it
                unheld.append(folder.name)
    return unheld


def test_a_rolling_restart_leaves_no_waiting_job_behind(
    start_worker, start_web, record_dir, tmp_path
):
    """Issue 30 #8: the last old process's waiting jobs sat in a free slot, unrun."""
    delay = 12.0
    web = start_web([start_worker()], web_processes=2, drain_timeout=0.5)
    ids = _post_delayed(web, 20, delay)
    due = time.monotonic() + delay
    web.proc.signal(signal.SIGUSR2)
    web.proc.expect(r"rolling restart done in ([\d.]+) s", 20)
    assert time.monotonic() < due - 1, "the restart outlasted the delay: raise it"
    _all_run(record_dir, ids, due + 10, "every waiting job run after the restart")
    assert not _unheld_with_segments(tmp_path / "journal")


def test_gunicorns_reload_leaves_no_waiting_job_behind(
    start_worker, start_gunicorn, record_dir
):
    """gunicorn's HUP starts new workers before the old ones stop: same as #8."""
    delay = 8.0
    worker = start_worker()
    # The old workers drain for DRAIN_TIMEOUT (their jobs wait): the new ones
    # open their journals meanwhile, while the old still hold their slots.
    gunicorn, port = start_gunicorn([worker], DRAIN_TIMEOUT="3")
    gunicorn.expect("barrier met", 20, times=2)
    web = Web(gunicorn, port)
    ids = _post_delayed(web, 20, delay)
    due = time.monotonic() + delay
    # Jobs in flight hold each old worker in its drain while the new ones open
    # their journals (else the order is a race the old code sometimes won).
    busy = [web.post("/jobs", {"sleep": 2.5})[2]["id"] for _ in range(8)]
    gunicorn.signal(signal.SIGHUP)
    gunicorn.expect("barrier met", 20, times=4)  # the new two serve
    gunicorn.expect(r"jobs unacknowledged at exit", 20, times=2)  # the old two
    assert time.monotonic() < due - 1, "the reload outlasted the delay: raise it"
    _all_run(record_dir, ids + busy, due + 10, "every job run after the reload")


def test_after_kill_9_every_process_answers_and_cancels_the_dead_ones_jobs(
    start_worker, start_web, record_dir
):
    """Issue 30 #4: the sibling answered 404 for a replayed job, and refused its
    cancel; the job then ran at its time."""
    delay = 10.0
    ops = ports_in_a_row(2)  # each process's OPS_PORT, re-bound after the kill
    web = start_web([start_worker()], web_processes=2, ops_port=ops)
    first, second = Web(web.proc, ops), Web(web.proc, ops + 1)
    code, _, body = first.post("/jobs", {"n": 1},
                               headers={"Greenpipe-Delay": f"{delay:g}"})  # fmt: skip
    assert code == 202, body
    job_id, due = body["id"], time.monotonic() + delay
    os.kill(first.stats()["pid"], signal.SIGKILL)
    web.proc.expect(r"process 0 \(pid \d+\) serving", 20, times=2)  # its newcomer
    assert time.monotonic() < due - 2, "the restart outlasted the delay: raise it"
    seen = [web.get(f"/jobs/{job_id}") for _ in range(20)]  # either process
    assert [s[0] for s in seen] == [200] * 20, [(s[0], s[2]) for s in seen]
    assert {s[2]["status"] for s in seen} == {"scheduled"}, seen[0]
    code, _, found = second.get(f"/jobs/{job_id}")
    assert code == 200 and found["status"] == "scheduled", (code, found)
    code, _, found = second.request("DELETE", f"/jobs/{job_id}",
                                    headers={"X-Greenpipe-Action": "cancel"})  # fmt: skip
    assert code == 200 and found["status"] == "cancelled", (code, found)
    sentinel = first.post("/jobs", {"n": 2},
                          headers={"Greenpipe-Delay": f"{delay + 1:g}"})[2]["id"]  # fmt: skip
    _all_run(record_dir, [sentinel], due + 12, "the sentinel due after the cancelled")
    assert job_id not in handled_ids(record_dir), "a cancelled job ran"
    for _ in range(6):
        code, _, found = web.get(f"/jobs/{job_id}")
        assert code == 200 and found["status"] == "cancelled", (code, found)


def test_another_web_in_the_same_folder_is_refused_the_journal(
    start_worker, start_web, procs, record_dir, tmp_path
):
    """Issue 31 #9: a web with other workers and no CURVE replayed another's jobs."""
    journal = tmp_path / "journal"
    first = start_web([start_worker()], journal_dir=journal, drain_timeout=0.2)
    first.post("/jobs", {"n": 1}, headers={"Greenpipe-Delay": "3600"})
    first.proc.signal(signal.SIGTERM)
    assert first.proc.wait_exit(10) == 0, first.proc.tail()
    first.proc.expect(r"1 jobs unacknowledged at stop stay in")
    other = start_worker()
    stranger = Proc("web", [*entry("web"), *flags({
        "port": 0, "workers": other.address, "journal_dir": journal,
        "dead_letter": tmp_path / "dead2.jsonl"})])  # fmt: skip
    procs.append(stranger)
    stranger.expected_exit = 2
    assert stranger.wait_exit(15) == 2, stranger.tail()
    line = stranger.expect(r"JOURNAL_DIR: .* is the journal of another web.*")[0]
    assert "127.0.0.1" in line and other.address.split(":")[1] in line, line
    assert "JOURNAL_TAKEOVER=true" in line and "its own JOURNAL_DIR" in line, line
    taker = start_web([other], journal_dir=journal, journal_takeover=True)
    taker.proc.expect(r"taken over \(JOURNAL_TAKEOVER\)")
    assert taker.stats()["waiting"] == 1, "the other web's job, now this one's"
