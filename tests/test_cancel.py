"""A CANCEL on the worker's side: a real `Worker` fed by a scripted web (issue 30).

The web's side of cancellation (queued, waiting, running, finished, unknown)
is in tests/test_retries.py; here, what the worker does with a CANCEL for a
job it holds, whenever the CANCEL arrives.
"""

from __future__ import annotations

import gevent
import gevent.event

from greenpipe import Cancelled, protocol
from greenpipe.config import WorkerSettings
from greenpipe.jobs import Job
from greenpipe.worker import Worker
from tests.support import ScriptedWeb, job_record


def test_a_cancel_read_with_its_job_in_one_batch_is_not_dropped():
    """JOBS then CANCEL in one receive batch: the handler's greenlet has not run."""
    started: list[str] = []

    def handler(job: Job) -> None:
        started.append(job.id)

    worker = Worker(WorkerSettings(port=0), handler)
    web = ScriptedWeb(worker)
    web.jobs(job_record(b"j-1"), job_record(b"j-2"))
    web.cancel(b"j-1")  # no yield between: as in one _receive batch
    answers = sorted(web.results(2))
    assert answers[0][:2] == (b"j-1", protocol.CANCELLED), answers
    assert answers[1] == (b"j-2", protocol.OK, b"")
    assert started == ["j-2"], "a job cancelled before it started does not run"
    assert not worker._running and worker._busy == 0


def test_a_cancel_interrupts_every_run_of_a_job_held_twice():
    """The same id run twice on one worker (a re-send after a loss): both stop."""
    running = gevent.event.Event()
    runs: list[int] = []

    def handler(job: Job) -> None:
        runs.append(job.attempt)
        if len(runs) == 2:
            running.set()
        try:
            gevent.sleep(30)  # sleep-ok: the handler's work, cancelled
        except Cancelled:
            runs.append(-job.attempt)
            raise

    worker = Worker(WorkerSettings(port=0), handler)
    web = ScriptedWeb(worker)
    web.jobs(job_record(b"j-1", attempt=1))
    web.jobs(job_record(b"j-1", attempt=2))  # re-sent: the web lost the worker
    assert running.wait(5), "both runs started within 5 s"
    web.cancel(b"j-1")
    answers = web.results(2)
    assert [status for _, status, _ in answers] == [protocol.CANCELLED] * 2, answers
    assert sorted(runs) == [-2, -1, 1, 2], "both runs were interrupted"
