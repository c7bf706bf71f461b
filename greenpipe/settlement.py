"""What became of jobs: acknowledgements, retries held, losses re-sent, cancels.

The dispatcher hands in what a link settled or lost; `Settlement` notes it
(the finished jobs behind GET /jobs/<id>, the books, the journal), wakes whoever
waits for a job, puts a failed run on the timer when its handler asked for a
retry, dead-letters what is given up on, and re-queues what a lost worker
held. A malformed message is counted in the books and logged (rate-limited)
here too. It calls nothing above it: the dispatcher wakes itself afterwards.

With a journal, a cancel and a retry's hold are answered as a 202 is: their
record (an ACK, a LATER) goes into the journal's group commit, and the cancel
answers ``cancelled`` (the retry is held, and said to be ``retrying``) only
once the group's write (and sync, with JOURNAL_SYNC=batch) succeeded. A
cancel whose record cannot be written answers 503 (`Unavailable`) and the
job keeps its place; a retry whose record cannot be written stays settling
(``in_flight``, sent nowhere) and its record is written again every
heartbeat: it is neither lost nor run early (a restart meanwhile re-sends it,
as a job whose worker was lost).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

import gevent.event

from greenpipe import protocol
from greenpipe.books import Books
from greenpipe.config import PipeSettings
from greenpipe.deadletter import DeadLetters
from greenpipe.errors import ProtocolError, Unavailable
from greenpipe.finished import FinishedJobs
from greenpipe.jobs import Envelope, Status, unfinished
from greenpipe.journal import Journal
from greenpipe.journal.commit import Group, GroupCommit, Noted
from greenpipe.later import next_run
from greenpipe.link import Link
from greenpipe.queues import Queues
from greenpipe.results import Keeper
from greenpipe.throttle import Throttle

log = logging.getLogger(__name__)


class Settlement:
    """Settles jobs the links return; see the module docstring."""

    def __init__(
        self,
        settings: PipeSettings,
        queues: Queues,
        finished: FinishedJobs,
        books: Books,
        journal: Journal | None,
        dead_letters: DeadLetters,
        commit: GroupCommit | None = None,
        wake: gevent.event.Event | None = None,
        keeper: Keeper | None = None,
    ) -> None:
        self.settings = settings
        self.queues = queues
        self.finished = finished
        self.books = books
        self.journal = journal
        self.dead_letters = dead_letters
        self._commit = commit if journal is not None else None
        self._wake = wake  # the dispatcher greenlet's: it writes the group
        self._keeper = keeper
        # Jobs finished are acknowledged in the journal by the keeper, once
        # their records are in the result store (RESULT_STORE); else at once.
        self._ack: Callable[[Iterable[Envelope]], object] | None = (
            keeper.acked if keeper is not None
            else journal.acked if journal is not None else None
        )  # fmt: skip
        self._throttle = Throttle(log)
        # Retries whose LATER record is being written: (job, its group).
        self.holding: dict[str, tuple[Envelope, Group]] = {}
        self._unkept: list[Envelope] = []  # their write failed: again next heartbeat
        # Cancels whose ACK record is being written: (job, its status before if
        # it was taken out of a queue, the group).
        self._cancels: dict[str, tuple[Envelope, dict[str, Any] | None, Group]] = {}

    def acked(
        self,
        link: Link,
        done: list[Envelope],
        results: list[tuple[Envelope, Status, bytes]],
        stray: int,
        now: float,
    ) -> None:
        """Jobs `link` settled: record, count, journal, wake whoever waits."""
        # Per job on the hot path: bound methods and one clock read per message.
        store, worker = self.finished.store, link.name
        fresh = self.finished.fresh  # a ResultStore's, or None
        for job in done:
            record = (Status.DONE, worker, job.attempt, b"", now, job.retries,
                      job.name or job.path, job.progress)  # fmt: skip
            store[job.id] = record
            if fresh is not None:
                fresh.append((job.id, record))
            if job.reply is not None:
                job.resolve(worker, Status.DONE)
        if results:
            results = self._results(link, results)
            for job, status, payload in results:
                record = (status, worker, job.attempt, payload, now, job.retries,
                          job.name or job.path, job.progress)  # fmt: skip
                store[job.id] = record
                if fresh is not None:
                    fresh.append((job.id, record))
                if job.reply is not None:
                    job.resolve(worker, status, payload)
        self.finished.trim()
        self.books.settled(done, results, stray, worker, now)
        if self._ack is not None:
            if done:
                self._ack(done)
            if results:
                self._ack([job for job, _, _ in results])

    def _results(
        self, link: Link, results: list[tuple[Envelope, Status, bytes]]
    ) -> list[tuple[Envelope, Status, bytes]]:
        """The jobs a result finishes; those whose handler asked for a retry wait.

        A failure after retries is the job's last: dead-lettered with its errors;
        a failure with no retry policy is kept there too, as ``failed``.
        """
        finished, held = [], []
        for job, status, payload in results:
            if status is Status.RETRYING and not job.cancelling:
                try:
                    delay, error = protocol.decode_retry(payload)
                except ProtocolError as exc:
                    self.malformed(link, str(exc))
                    delay, error = 0.0, payload
                if delay > self.settings.max_delay:  # never cut short: refused
                    status, payload = self._refused(job, link, delay, error)
                    finished.append((job, status, payload))
                    continue
                next_run(job, delay, error.decode("utf-8", "replace"))
                self.books.retrying(job.id, link.name, error, job.name or job.path)
                held.append(job)
                continue
            if status is Status.RETRYING:  # cancelled meanwhile: no retry
                status, payload = Status.CANCELLED, b"cancelled; not retried"
            elif status is Status.FAILED and job.retries:
                job.errors = [*job.errors, payload.decode("utf-8", "replace")]
                note = f"its handler failed {job.retries + 1} times (retries spent)"
                self.dead_letters.write(job, note, link.name)
                status = Status.DEAD
            elif status is Status.FAILED:  # no retry policy: kept, re-sendable
                job.errors = [*job.errors, payload.decode("utf-8", "replace")]
                note = "its handler failed (it had no retry policy)"
                self.dead_letters.write(job, note, link.name, Status.FAILED)
            if status is Status.CANCELLED:
                self.books.cancelled += 1
            finished.append((job, status, payload))
        if held:
            self.books.retried += len(held)
            self._hold(held)
        return finished

    def _hold(self, jobs: list[Envelope]) -> None:
        """Hold `jobs` for their retry once their LATER record is written."""
        if self._commit is None or self.journal is None:
            for job in jobs:
                self.queues.later.add(job)
            return
        group = self._commit.note(
            self.journal.later_record(jobs), partial(self._held, jobs)
        )
        for job in jobs:
            self.holding[job.id] = (job, group)
        if self._wake is not None:
            self._wake.set()

    def _held(self, jobs: list[Envelope], error: str) -> None:
        """Their LATER record's group settled: hold them, or try again later."""
        if error:
            self._unkept.extend(jobs)  # still `holding`: sent nowhere
            return
        for job in jobs:
            del self.holding[job.id]
            if job.cancelling:  # cancelled while its record was written
                self.cancelled([job], "cancelled; not retried", "")
            else:
                self.queues.later.add(job)

    def settling(self) -> int:
        """Jobs whose cancel or retry's record is being written (or failed to be)."""
        return len(self.holding) + len(self._cancels)

    def hold_again(self) -> None:
        """Every heartbeat: write the LATER records that could not be written."""
        if self._unkept:
            jobs, self._unkept = self._unkept, []
            self._hold(jobs)

    def status(self, job_id: str) -> dict[str, Any] | None:
        """A job whose cancel (taken out of its queue) or retry is being
        journaled: as it was till then."""
        cancel = self._cancels.get(job_id)
        if cancel is not None:
            return cancel[1]
        holding = self.holding.get(job_id)
        if holding is not None:  # its run is not settled until its retry is kept
            return unfinished(holding[0], Status.IN_FLIGHT)
        return None

    def orphaned(self, jobs: list[Envelope], why: Callable[[Envelope], str]) -> None:
        """Jobs whose name (or queue) the workers ran and no longer run
        (removed, or back with another registry or QUEUES): dead-lettered,
        saying `why`, rather than waiting for ever; the dead-letter file can
        re-send each once a worker runs it."""
        for job in jobs:
            note = why(job)
            log.warning("job %s: %s", job.id, note)
            job.errors = [*job.errors, note]
            self.dead_letters.write(job, note, "")
            self.finish(job, Status.DEAD, "", note.encode())

    def _refused(
        self, job: Envelope, link: Link, delay: float, error: bytes
    ) -> tuple[Status, bytes]:
        """A retry asked `delay` s ahead, past MAX_DELAY: the job is dead, not cut."""
        note = (
            f"retry refused: its handler asked for one in {delay:.0f} s, beyond "
            f"MAX_DELAY ({self.settings.max_delay:.0f} s); "
            + error.decode("utf-8", "replace")
        )
        log.warning("job %s from %s: %s", job.id, link.name, note)
        job.errors = [*job.errors, note]
        self.dead_letters.write(job, note, link.name)
        return Status.DEAD, note.encode()

    def cancel(self, job_id: str, links: Sequence[Link]) -> dict | None:
        """Cancel a job this process accepted; what became of it, None if unknown.

        Queued or waiting for a retry: removed, journaled as settled (a
        restart does not run it): ``cancelled``. Running: the worker throws
        `Cancelled` into its handler and it is not retried: ``in_flight``
        with ``cancelling``. Finished: its outcome, unchanged. Idempotent.
        """
        writing = self.holding.get(job_id) or self._cancels.get(job_id)
        if writing is not None:  # its retry's or a cancel's record: wait for it
            self._await(writing[-1], "the job's record")
            if job_id in self.holding:
                raise Unavailable(
                    f"cannot cancel job {job_id} now: its retry is not journaled "
                    "yet (the journal cannot write); retry soon", 2
                )  # fmt: skip
            return self.cancel(job_id, links)  # where it is now
        before = self.queues.status(job_id)
        job = self.queues.remove(job_id)
        if job is not None:
            assert before is not None
            if self._commit is None or self.journal is None:
                self._cancel_kept(job, before, "")
            else:  # answered once its record is kept, as a 202 is
                self._write_cancel(job, before, partial(self._cancel_kept, job, before))
            return self.finished.get(job_id)
        key = job_id.encode("ascii", "replace")
        for link in links:
            job = link.jobs.get(key)
            if job is None:
                continue
            if not job.cancelling:
                if self._commit is None or self.journal is None:
                    self._interrupt(job, links, "")
                else:  # kept first: a restart must not run it again
                    self._write_cancel(job, None, partial(self._interrupt, job, links),
                                       link.name)  # fmt: skip
                    return self._cancel_answer(job, links)
            return self._running(job, link) | {"cancelling": True}
        return self.finished.get(job_id)

    def _write_cancel(
        self,
        job: Envelope,
        before: dict[str, Any] | None,
        done: Noted,
        worker: str = "",
    ) -> None:
        """Write `job`'s cancel with the next group; `done` acts on what it
        became. Raises `Unavailable` if it could not be written."""
        assert self._commit is not None and self.journal is not None
        if self._keeper is not None:
            self._keep_cancel(job, before, worker)  # found after a crash once not owed
        group = self._commit.note(self.journal.cancel_record([job]), done)
        self._cancels[job.id] = (job, before, group)  # before: None on a link
        if self._wake is not None:
            self._wake.set()
        try:
            self._await(group, "its cancel")
        except Unavailable:
            if self._keeper is not None:
                self._keeper.withdraw(job)
            raise

    def _keep_cancel(
        self, job: Envelope, before: dict[str, Any] | None, worker: str
    ) -> None:
        """The cancel's provisional record, written before its journal record;
        `Unavailable` (the job back where it was) if it cannot be.

        The write yields: meanwhile a second cancel of the job (taken out of
        its queue already) finds this one in `_cancels` and waits for it. A
        cancel interrupted there (a timeout, a stop) puts the job back too.
        """
        assert self._keeper is not None
        writing = Group()
        self._cancels[job.id] = (job, before, writing)
        error = "the job's record could not be written to the result store"
        try:
            if self._keeper.cancelling(job, running=worker):
                error = ""
        finally:
            if error:  # nothing journaled: it stays (or goes back) where it was
                self._cancels.pop(job.id, None)
                if before is not None:
                    self.queues.put_back(job, Status(before["status"]))
                    if self._wake is not None:
                        self._wake.set()
            writing.settle(error)  # a waiting cancel: looks again, or a 503
        if error:
            path = self._keeper.store.path
            raise Unavailable(f"cannot cancel job {job.id} now: {error} ({path}); "
                              "retry soon", 2)  # fmt: skip

    @staticmethod
    def _running(job: Envelope, link: Link) -> dict[str, Any]:
        return unfinished(job, Status.IN_FLIGHT, link.name)

    def _interrupt(self, job: Envelope, links: Sequence[Link], error: str) -> None:
        """The cancel of a job sent to a worker is kept: interrupt it wherever it
        is now (a worker, a queue, a retry's hold), unless it finished."""
        self._cancels.pop(job.id, None)
        if error:
            return
        if self.journal is not None:
            self.journal.forget([job])
        job.cancelling = True  # not retried, not re-sent after a loss
        for link in links:
            if link.jobs.get(job.key) is job:
                link.send(protocol.encode_cancel([job.key]))
                return
        before = self.queues.status(job.id)
        if before is not None and self.queues.remove(job.id) is job:
            self._cancel_kept(job, before, "")  # re-queued after a loss meanwhile

    def _cancel_answer(self, job: Envelope, links: Sequence[Link]) -> dict | None:
        """What a cancel of a running job answers once its record is kept."""
        for link in links:
            if link.jobs.get(job.key) is job:
                return self._running(job, link) | {"cancelling": True}
        if job.id in self.holding:  # its retry's record is being written
            return unfinished(job, Status.IN_FLIGHT) | {"cancelling": True}
        return self.finished.get(job.id)

    def _cancel_kept(self, job: Envelope, before: dict[str, Any], error: str) -> None:
        """The cancel's record is kept: the job is cancelled; or it could not be
        (`error`): the job goes back where it was (the cancel answers 503)."""
        self._cancels.pop(job.id, None)
        if error:
            self.queues.put_back(job, Status(before["status"]))
            return
        if self.journal is not None:
            self.journal.forget([job])
        # Runs so far: its retries if it waits to run again (a retry counts
        # the run to come), else one if it was ever delivered.
        runs = job.retries or (1 if job.attempt else 0)
        reason = "cancelled before it ran" + (" again" if runs else "")
        self.cancelled([job], reason, "", retries=runs - 1)

    @staticmethod
    def _await(group: Group, what: str) -> None:
        group.wait()
        if group.error:
            raise Unavailable(f"{what} is not journaled: {group.error}", 2)

    def cancelled(
        self, jobs: list[Envelope], reason: str, worker: str, retries: int = -2
    ) -> None:
        """Settle `jobs` as cancelled; `retries`: runs - 1 if not the job's own."""
        for job in jobs:
            before = job.retries if retries < -1 else retries
            self.finished.add(job.id, Status.CANCELLED, worker, job.attempt,
                              reason.encode(), retries=before,
                              name=job.name or job.path,
                              progress=job.progress)  # fmt: skip
            job.resolve(worker, Status.CANCELLED, reason.encode())
        self.books.cancelled += len(jobs)
        if self._ack is not None:  # journaled already (a cancel), or an ACK
            self._ack(jobs)

    def lose(self, link: Link, reason: str, graceful: bool = False) -> None:
        """Take back every job `link` holds, re-queue or dead-letter it, reconnect."""
        jobs = link.take_back(graceful)
        requeued, cancelled, given_back = 0, 0, []
        for job in jobs:
            if job.cancelling:  # it was to be interrupted: it is not re-sent
                self.cancelled([job], "cancelled; its worker was lost", link.name)
                cancelled += 1
            elif job.deliveries >= self.settings.max_deliveries:
                most = self.settings.max_deliveries
                note = (  # attempts count every run's deliveries: say them apart
                    f"worker lost ({reason}) on run {job.retries + 1}, delivery "
                    f"{job.deliveries} of {most} (MAX_DELIVERIES)"
                )
                self.dead_letters.write(job, note, link.name)
                self.finish(job, Status.DEAD, link.name, note.encode())
            elif graceful and not job.suspect:
                given_back.append(job)  # the worker left in good order: no suspect
                requeued += 1
            else:
                job.suspect = True
                self.queues.retry.append(job)
                requeued += 1
        self.queues.fresh.extendleft(reversed(given_back))  # ahead of newer jobs
        link.resent += requeued
        self.books.resent += requeued
        if graceful and not jobs:
            log.info("worker %s left", link.name)
        elif link.reliable:
            log.warning(
                "worker %s %s (%s): %d jobs to re-send (each to the next worker "
                "that runs its name), %d dead-lettered%s",
                link.name,
                "left" if graceful else "lost",
                reason,
                requeued,
                len(jobs) - requeued - cancelled,
                f", {cancelled} cancelled (as asked)" if cancelled else "",
            )

    def malformed(self, link: Link, what: str) -> None:
        """A message from `link` was dropped: count it, and say so (rate-limited)."""
        self.books.malformed += 1
        self._throttle.warning(
            f"malformed:{link.name}",
            "dropped a malformed message from worker %s: %s (%d so far)",
            link.name,
            what,
            self.books.malformed,
        )

    def finish(
        self, job: Envelope, status: Status, worker: str, payload: bytes = b""
    ) -> None:
        """`job` is done with: keep its outcome for status lookups, wake a waiter."""
        self.finished.add(job.id, status, worker, job.attempt, payload,
                          retries=job.retries, name=job.name or job.path,
                          progress=job.progress)  # fmt: skip
        if self._ack is not None:  # no longer owed
            self._ack((job,))
        job.resolve(worker, status, payload)
