"""A CANCEL on the worker's side: a real `Worker` fed by a scripted web (issue 30).

The web's side of cancellation (queued, waiting, running, finished, unknown)
is in tests/test_retries.py; here, what the worker does with a CANCEL for a
job it holds, whenever the CANCEL arrives.
"""

from __future__ import annotations

import random

import gevent
import gevent.event
import pytest
from greenlet import getcurrent

from greenpipe import Cancelled, protocol
from greenpipe.config import WorkerSettings
from greenpipe.jobs import Job
from greenpipe.worker import Worker
from tests.support import ScriptedWeb, job_record

pytestmark = pytest.mark.inprocess  # make test-fast


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
    assert not worker.pool.running and worker.pool.busy == 0


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


class CancelModel:
    """A seeded schedule of JOBS, CANCELs and turns of the loop against a Worker.

    The checker is the README's promise: a cancel read for a job the worker
    holds stops every run of it not finished by then: a run not started never
    starts; a running one is interrupted at its next switch (a run already
    resuming as the CANCEL is read may take that one turn, and finish if it
    was its last: it answers OK, truthfully). Every run answers exactly once:
    OK if its handler returned, CANCELLED if not.
    """

    IDS = (b"a", b"b", b"c", b"d")

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.worker = Worker(WorkerSettings(port=0, concurrency=4), self.handler)
        self.web = ScriptedWeb(self.worker)
        self.log: list[tuple[str, bytes, int]] = []  # (event, id, run), in order
        self.schedule: list[str] = []
        self.sent: list[bytes] = []
        self.cancelled: set[bytes] = set()  # never sent again, as a web does

    def handler(self, job: Job) -> None:
        run = id(getcurrent())
        self.log.append(("start", job.raw_id, run))
        try:
            for _ in range(int(job.json()["turns"])):
                gevent.sleep(0)  # sleep-ok: the handler's work, in loop turns
                self.log.append(("turn", job.raw_id, run))
        except Cancelled:
            self.log.append(("interrupted", job.raw_id, run))
            raise
        self.log.append(("end", job.raw_id, run))

    def step(self) -> None:
        live = [i for i in self.IDS if i not in self.cancelled]
        roll = self.rng.random()
        if roll < 0.45 and live:
            batch = [self.rng.choice(live) for _ in range(self.rng.randint(1, 3))]
            records = [protocol.encode_job(i, 1, b"POST", b"/jobs", b"", b"",
                                           b'{"turns": %d}' % self.rng.randint(0, 3))
                       for i in batch]  # fmt: skip
            self.schedule.append(f"jobs {b' '.join(batch).decode()}")
            self.sent += batch
            self.web.jobs(*records)
        elif roll < 0.7 and live:
            victim = self.rng.choice(live)
            self.schedule.append(f"cancel {victim.decode()}")
            self.log.append(("cancel", victim, 0))
            self.cancelled.add(victim)
            self.web.cancel(victim)
        else:
            turns = self.rng.randint(1, 3)
            self.schedule.append(f"turns {turns}")
            for _ in range(turns):
                gevent.sleep(0)  # sleep-ok: the loop turns the schedule gives

    def check(self, seed: int) -> None:
        answers = self.web.results(len(self.sent))
        where = f"seed {seed}, schedule {self.schedule}"
        assert sorted(i for i, _, _ in answers) == sorted(self.sent), where
        for raw_id in set(self.sent):
            events = [(n, e, run) for n, (e, i, run) in enumerate(self.log)
                      if i == raw_id]  # fmt: skip
            ended = sum(1 for _, e, _ in events if e == "end")
            got = [status for i, status, _ in answers if i == raw_id]
            sent = self.sent.count(raw_id)
            assert (got.count(protocol.OK), got.count(protocol.CANCELLED)) == (
                ended, sent - ended), f"{raw_id!r}: {got}; {where}"  # fmt: skip
            cancels = [n for n, e, _ in events if e == "cancel"]
            if not cancels:
                continue
            after = [(e, run) for n, e, run in events if n > cancels[0]]
            assert ("start" not in (e for e, _ in after)), (
                f"{raw_id!r} started after its cancel was read; {where}")  # fmt: skip
            for run in {run for e, run in after if e == "end"}:
                turns = sum(1 for e, r in after if r == run and e == "turn")
                assert turns <= 1, (
                    f"a run of {raw_id!r} went on {turns} turns after its cancel "
                    f"was read; {where}"
                )
        assert not self.worker.pool.running and not self.worker.pool.cancelled, where
        assert self.worker.pool.busy == 0, where


def test_a_cancel_racing_starts_and_re_sends_keeps_the_promise_seeded():
    """Schedules of JOBS (ids repeat: re-sends), CANCELs and loop turns; the seed
    and the schedule are printed on failure."""
    for seed in range(300):
        model = CancelModel(seed)
        for _ in range(25):
            model.step()
        model.check(seed)
