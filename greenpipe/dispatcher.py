"""The web side's conductor: the queues, the dispatch loop, acks, losses, stopping.

Request greenlets call `Dispatcher.submit`, which asks `Admission` whether
the job is taken, then queues it (with a journal, after its group commit:
`greenpipe.journal.commit`) and wakes the dispatcher greenlet; that greenlet sends
queued jobs in one batch per worker (`flush`), and every heartbeat lets the
`Fleet` ping and name the links to lose (`tick`). The links' readers name
their link in the shared `Inbox` and wake that greenlet, which has each link
decode what it read (`Link.receive`) and reacts to the `Event`s returned;
rooms below call nothing here. Nothing here waits on a socket, so nothing
on the request path does either.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence

import gevent
import gevent.event
import zmq.green as zmq

from greenpipe import answers, protocol
from greenpipe import books as books_module
from greenpipe.admission import Admission, IdempotencyKeys
from greenpipe.books import LATENCY_BUCKETS, Books, Snapshot
from greenpipe.config import Endpoint, PipeSettings
from greenpipe.deadletter import DeadLetters
from greenpipe.errors import LinkError
from greenpipe.finished import FinishedJobs
from greenpipe.fleet import Fleet, LinkFactory
from greenpipe.jobs import Envelope, Outcome, Status
from greenpipe.journal import Journal
from greenpipe.journal.slots import Identity
from greenpipe.link import Event, Happened, Inbox, Link
from greenpipe.queues import Queues
from greenpipe.recovery import Recovery
from greenpipe.resend import Resender
from greenpipe.results import Keeper, ResultStore, store_path
from greenpipe.settlement import Settlement
from greenpipe.throttle import Throttle

log = logging.getLogger(__name__)

__all__ = ["Dispatcher", "LATENCY_BUCKETS"]


class Dispatcher:
    """Feeds the configured workers: barrier, round-robin, at least once, bounded.

    The README lists these guarantees; docs/design-notes.md says how each is kept.

    `clock` (seconds, monotonic) and `link_factory` are seams for tests: a
    scripted history of messages can drive a dispatcher whose links open no
    socket, on a clock the test moves.
    """

    def __init__(
        self,
        settings: PipeSettings,
        context: zmq.Context | None = None,
        name: str = "",
        *,
        clock: Callable[[], float] = time.monotonic,
        link_factory: LinkFactory | None = None,
    ) -> None:
        self.settings = settings
        self.name = name or f"web pid {os.getpid()}"
        self._clock = clock
        self.books = Books()
        # Set by whoever has work for the dispatcher greenlet: jobs taken, a
        # group to write, what a link read.
        self._wake = gevent.event.Event()
        self.inbox = Inbox(self._wake)
        self.fleet = Fleet(settings, context or zmq.Context.instance(), self.inbox,
                           link_factory)  # fmt: skip
        self.finished = FinishedJobs(settings.status_keep, settings.status_ttl, clock)
        self.dead_letters = DeadLetters(settings.dead_letter)
        self.resender = Resender(  # kept jobs re-sent: pipe.resend, the dashboard
            self.dead_letters,
            lambda job, job_id: self.admission.take(
                job, "", self._draining, job_id=job_id
            ),  # fmt: skip
            lambda: self.admission.new_id(),
            settings.resend_again_after,
            settings.status_ttl,
            lambda: self.barrier_met,
        )
        keys = IdempotencyKeys(settings.idempotency_ttl)
        self.journal: Journal | None = None
        if settings.journal_dir != "off":
            self.journal = Journal(
                settings.journal_dir,
                settings.journal_sync,
                settings.journal_corrupt,
                keys=keys.live,  # the keys file holds the keys in their window
                identity=identity(settings),
                takeover=settings.journal_takeover,
            )
        # Finished jobs' records past a restart, from any process (RESULT_STORE).
        self.results: ResultStore | None = None
        self.keeper: Keeper | None = None
        path = store_path(settings.result_store, settings.journal_dir)
        if path:
            self.results = ResultStore(path, settings.status_ttl,
                                       settings.result_store_size)  # fmt: skip
            self.keeper = Keeper(self.results, self.finished, self.journal)
        self.queues = Queues(clock)
        self._fresh, self._retry = self.queues.fresh, self.queues.retry
        self.later = self.queues.later  # waiting for a time: a delay, a backoff
        self.recovery: Recovery | None = None  # what the journal owes, replayed
        if self.journal is not None:
            self.recovery = Recovery(self.journal, self.queues, keys, self.books,
                                     clock)  # fmt: skip
        self.admission = Admission(
            settings, self.fleet, self.books, keys, self.journal, self.queues,
            self._wake, clock,
        )  # fmt: skip
        self.settlement = Settlement(
            settings, self.queues, self.finished, self.books, self.journal,
            self.dead_letters, self.admission.group_commit, self._wake, self.keeper,
        )  # fmt: skip
        self._settled = gevent.event.Event()
        self._draining = False
        self._closed = False
        self._greenlet: gevent.Greenlet | None = None
        self._job_timeout_ms = round(settings.job_timeout * 1000)
        # Until the barrier is met (or READY_TIMEOUT after start), nothing is
        # sent: replayed jobs then go round-robin, not all to the first worker.
        self._hold_until = 0.0
        # A worker enforces the job time limit itself; this is the web's backstop.
        self._ack_deadline = 2 * settings.job_timeout + settings.heartbeat_timeout
        self._throttle = Throttle(log)

    @property
    def links(self) -> list[Link]:
        return self.fleet.links

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Replay the journal (if any), open the links, start the greenlet.

        Raises ConfigError or JournalError if the journal cannot be opened.
        """
        if self.recovery is not None:
            self.recovery.start()  # the journal's folder made: the store's too
        if self.keeper is not None:
            self.keeper.store.open()
            self.keeper.start()
        self._hold_until = self._clock() + self.settings.ready_timeout
        self.fleet.open()
        self._greenlet = gevent.spawn(self._run)

    def adopt(self) -> None:
        """Adopt the journal slots whose process stopped or died (each tick):
        `Recovery.adopt`, between group commits and not while draining."""
        if self.recovery is None or self._draining or self.admission.in_commit():
            return
        if self.recovery.adopt():
            self._wake.set()

    def drain(self, timeout: float) -> int:
        """Wait up to `timeout` s until every accepted job is acknowledged.

        Returns how many were not (jobs waiting for a retry included: they
        cannot finish now). With a journal they stay owed in it and the next
        start replays them; without one they are written to the dead-letter
        file, once each (those already sent may still be handled: at least
        once, not exactly).
        """
        self._draining = True
        self._check_settled()
        self._settled.wait(timeout)
        if self.journal is not None:
            left = self.outstanding()
            if left:
                log.warning(
                    "journal: %d jobs unacknowledged at stop stay in %s and are "
                    "replayed at the next start",
                    left,
                    self.journal.path,
                )
            return left
        left = self.dead_letters.at_stop(self.queues.take_all(), self.links)
        if left:
            log.warning(
                "%d jobs unacknowledged at stop written to %s",
                left,
                self.dead_letters.path,
            )
        return left

    def close(self) -> None:
        """Say DONE to every worker (it forgets this web) and close the sockets.

        A group commit under way finishes first (its requests get their answer),
        and requests parked behind it get 503: no request stays parked.
        """
        self._closed = True
        self._draining = True
        self.hear()  # acknowledgements read before the close still count
        self.admission.close()  # may wait for a group's sync: the readers go on
        self.hear()  # and what they read meanwhile counts too
        self.admission.close()  # the records that noted (a retry's, a cancel's)
        self.fleet.close()
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
        if self.keeper is not None:  # records first, then their ACKs: the journal's
            self.keeper.close()
        if self.journal is not None:
            self.journal.close()

    def reconfigure(self, endpoints: Sequence[Endpoint]) -> tuple[list[str], list[str]]:
        """Make `endpoints` the workers, live; returns (added, removed) names.

        A removed worker takes no new job; it leaves once what it holds is
        acknowledged, or re-sent elsewhere if it is lost meanwhile.
        """
        added, removed = self.fleet.reconfigure(endpoints)
        self.books.added += len(added)
        self.books.removed += len(removed)
        self._wake.set()
        return added, removed

    # -- the request path -----------------------------------------------------------

    def submit(self, job: Envelope, key: str = "") -> Envelope:
        """Accept `job` (made by `Envelope.new`), or raise `Unavailable` (a 503).

        Returns it named. Never a 202 for a job not kept: see `Admission.take`.
        """
        return self.admission.take(job, key, self._draining)

    @staticmethod
    def outcome(job: Envelope, timeout: float) -> Outcome | None:
        """Wait up to `timeout` s for what became of a job submitted with reply."""
        assert job.reply is not None, "submit(Envelope.new(..., wait=True)) first"
        return job.reply.wait(timeout)

    # -- the dispatcher greenlet ----------------------------------------------------

    def _run(self) -> None:
        interval = self.settings.heartbeat
        clock = self._clock
        next_tick = clock()
        later = self.later
        while not self._closed:
            due = later.next_due() if later else None
            if due is not None and not self.fleet.barrier.is_set():  # flush holds
                due = max(due, self._hold_until)  # them till then (JOINED wakes)
            until = next_tick if due is None else min(next_tick, due)
            self._wake.wait(max(0.0, until - clock()))
            self._wake.clear()
            try:
                self.hear()
                self.flush()
                if self._draining:  # a group commit may have settled meanwhile
                    self._check_settled()
                if clock() >= next_tick:
                    next_tick = clock() + interval
                    self.tick()
            except Exception:  # a bug must not stop the dispatching for good
                self._throttle.exception("dispatcher", "dispatcher: unexpected error")

    def flush(self) -> None:
        """Send every queued job that a worker has credit for, one batch per link.

        With a journal, what was submitted since the last flush is written
        first: an acknowledgement can never be recorded before its job.
        """
        self.admission.commit()
        if not self.fleet.barrier.is_set() and self._clock() < self._hold_until:
            return  # jobs replayed at start: round-robin from the barrier on
        self.queues.due(self._clock())  # delayed jobs and retries whose time came
        batches: dict[Link, list[Envelope]] = {}
        # Each job to a worker that runs its name (greenpipe.routing).
        routes = self.fleet.routes
        for link, job in routes.plan(self.queues):
            job.attempt += 1
            job.deliveries += 1
            link.assign(job)
            batches.setdefault(link, []).append(job)
        for link, jobs in batches.items():
            self._send(link, jobs)
        if routes.orphans:  # a name no worker runs any more: given up on, with why
            orphans, routes.orphans = routes.orphans, []
            self.settlement.orphaned(orphans, routes.orphan_note)

    def _send(self, link: Link, jobs: list[Envelope]) -> None:
        sent = 0
        try:
            sent = link.deliver(jobs, self._clock(), self._job_timeout_ms)
        except LinkError as exc:
            self._throttle.warning(f"send:{link.name}", "%s", exc)
        if not link.reliable:  # at most once: done when libzmq has it
            for job in jobs[:sent]:
                self.settlement.finish(job, Status.UNACKNOWLEDGED, link.name)
        elif sent and self.journal is not None:
            self.journal.sent(jobs[:sent] if sent < len(jobs) else jobs)
        if sent == len(jobs):
            return
        # Not handed to libzmq: take them back in order, and reconnect the link.
        unsent = jobs[sent:]
        link.give_back(unsent)
        for job in reversed(unsent):
            job.attempt -= 1
            job.deliveries -= 1
            (self._retry if job.suspect else self._fresh).appendleft(job)
        self._lose(link, "cannot send: connection not complete")

    def tick(self) -> None:
        """Every HEARTBEAT: greet, ping, and lose the silent and the overdue."""
        if self.journal is not None:
            self.journal.flush_acks()
            self.settlement.hold_again()  # retries whose record could not be written
            self.adopt()
        self.hear()  # what was read first: the sockets are read after it, in order
        for link, event in self.fleet.tick(self._clock(), self.name,
                                           self._ack_deadline):  # fmt: skip
            self._react(link, event)

    # -- what the links hand in ------------------------------------------------------

    def hear(self) -> None:
        """Have each link the readers named apply what it read; react to it."""
        now = self._clock()
        for link in self.inbox.take():
            for event in link.receive(now):
                try:
                    self._react(link, event)
                except Exception:  # a bug must not lose the rest of the batch
                    self._throttle.exception(
                        f"bug:{link.name}", "dispatcher: unexpected error"
                    )

    def _react(self, link: Link, event: Event) -> None:
        what, detail = event
        if what is Happened.ACKED:
            self._acked(link, *detail)
        elif what is Happened.CREDIT:
            if detail > 0 and self.queues.pending():
                self._wake.set()
        elif what is Happened.JOINED:
            if detail:
                log.info("worker %s %s: credit %d (%s)", link.name, detail,
                         link.credit, link.worker_name)  # fmt: skip
                self._check_frame(link)
            self.fleet.joined(link, self._clock())
            self._wake.set()
        elif what is Happened.HELLO_DUE:
            self.fleet.hello(link, self.name)
        elif what is Happened.LOST:
            reason, graceful = detail
            self._lose(link, reason, graceful)
        elif what is Happened.LEAVING:
            log.info("worker %s is leaving; %d jobs in flight", link.name, detail)
        elif what is Happened.REFUSED:
            self._throttle.warning(f"refused:{link.name}",
                                   "worker %s refused this web: %s",
                                   link.name, detail)  # fmt: skip
        elif what is Happened.HANDSHAKE_FAILED:
            self._throttle.warning(f"handshake:{link.name}", "worker %s: %s",
                                   link.name, detail)  # fmt: skip
        elif what is Happened.MISMATCH:
            self._throttle.error(
                f"version:{link.name}",
                "worker %s speaks protocol %d, this web %d; "
                "run the same greenpipe on both",
                link.name,
                detail,
                protocol.VERSION,
            )
        elif what is Happened.MALFORMED:
            self.settlement.malformed(link, detail)

    def _check_frame(self, link: Link) -> None:
        if link.max_frame < self.settings.max_body + protocol.JOB_OVERHEAD:
            log.warning(
                "worker %s accepts frames up to %d bytes but MAX_BODY is %d: raise "
                "the worker's MAX_FRAME or lower MAX_BODY, or large jobs will "
                "not get through",
                link.name,
                link.max_frame,
                self.settings.max_body,
            )

    def _acked(
        self,
        link: Link,
        done: list[Envelope],
        results: list[tuple[Envelope, Status, bytes]],
        stray: int,
    ) -> None:
        self.settlement.acked(link, done, results, stray, self._clock())
        if self.fleet.removing and not link.jobs:
            self.fleet.retire_if_done(link)
        if self.queues.pending() or self.later:
            self._wake.set()
        if self._draining:
            self._check_settled()

    def cancel(self, job_id: str) -> dict | None:
        """Cancel a job: see `Settlement.cancel`."""
        return self.settlement.cancel(job_id, self.links)

    def _lose(self, link: Link, reason: str, graceful: bool = False) -> None:
        """Take back every job `link` holds (`Settlement.lose`); wake, retire."""
        self.settlement.lose(link, reason, graceful)
        self._wake.set()
        self.fleet.retire_if_done(link)  # its jobs went elsewhere: gone for good
        if self._draining:
            self._check_settled()

    def _check_settled(self) -> None:
        if not self._moving():
            self._settled.set()

    # -- reporting -----------------------------------------------------------------

    def status(self, job_id: str) -> dict | None:
        """What became of a job this process holds or remembers in memory:
        `answers.job_status`; then ask the siblings, then `stored`."""
        return answers.job_status(job_id, self.links, self.queues, self.settlement,
                                  self.finished)  # fmt: skip

    def held(self, status: str | None = None, name: str | None = None) -> list[dict]:
        """The jobs this process holds, not finished: `answers.held_jobs`."""
        return answers.held_jobs(self.links, self.queues, self.settlement, status,
                                 name)  # fmt: skip

    def reporting(self, limit: int) -> list[dict]:
        """Running jobs with a progress report: `answers.reporting`."""
        return answers.reporting(self.links, limit)

    def stored(self, job_id: str) -> dict | None:
        """A job's record in the result store: one that finished before a
        restart, or in another process sharing the file; None if none."""
        return None if self.results is None else self.results.get(job_id)

    def owns(self, job_id: str) -> bool:
        """True if `job_id` was made by this process (whatever became of it)."""
        return self.admission.owns(job_id)

    @property
    def barrier_met(self) -> bool:
        return self.fleet.barrier.is_set()

    def wait_barrier(self, timeout: float) -> bool:
        """Block up to `timeout` s until every configured worker said READY once."""
        return self.fleet.barrier.wait(timeout)

    def now(self) -> float:
        """The dispatcher's clock (monotonic seconds)."""
        return self._clock()

    def pending(self) -> int:
        """Jobs accepted and waiting for a worker."""
        return self.queues.pending()

    def outstanding(self) -> int:
        """Jobs taken and not yet finished: being journaled, queued, in flight,
        waiting for a retry, or whose cancel or retry is being journaled."""
        return self._moving() + len(self.later) + self.settlement.settling()

    def _moving(self) -> int:
        """Jobs a drain waits for: in group commit, queued or in flight."""
        return self.admission.in_commit() + self.pending() + self.fleet.in_flight()

    def health(self) -> tuple[bool, dict]:
        """/healthz's answer: `answers.health`."""
        return answers.health(self.fleet, self.journal, self._draining)

    def snapshot(self) -> Snapshot:
        """Every figure of this process now: /stats, /metrics and the dashboard's."""
        self.books.redriven = self.resender.redriven  # counted where it happens
        return books_module.take(
            self.name,
            self.books,
            self.links,
            self._clock(),
            pending=self.pending(),
            pending_by_queue=self.queues.by_queue(self.fleet.routes.queues),
            waiting=len(self.later),
            barrier=self.barrier_met,
            dead_lettered=self.dead_letters.count,
            journal=books_module.journal_report(self.journal, self.books.replayed),
        )

    def stats(self) -> dict:
        return self.snapshot().stats()


def identity(settings: PipeSettings) -> Identity:
    """The web a journal belongs to, from its configured workers (see `Identity`)."""
    return Identity(
        tuple(sorted(str(endpoint) for endpoint in settings.workers)),
        os.path.abspath(settings.workers_file) if settings.workers_file else "",
        bool(settings.curve_server),
    )
