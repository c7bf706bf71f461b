"""The public core: `Pipe` feeds the workers from any gevent program, no Flask needed.

`greenpipe.inline.InlinePipe` has the same face and runs each job at once in
the calling process, for tests of views without workers (``GREENPIPE_INLINE``).
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import gevent
import gevent.pool
import zmq.green as zmq

from greenpipe import config
from greenpipe.admission import check_key
from greenpipe.books import Snapshot
from greenpipe.config import PipeSettings
from greenpipe.dispatcher import Dispatcher
from greenpipe.errors import BadJob, TooLarge
from greenpipe.history import History
from greenpipe.jobs import Envelope, Outcome, Status, queue_name
from greenpipe.patching import check_pipe_start
from greenpipe.purge import WAITING, Purged, purge
from greenpipe.pushargs import MISSING, check_wait, not_before, outcome_payload, payload
from greenpipe.resend import Resent, chosen_ids
from greenpipe.siblings import Question, Siblings

# Every Pipe, so that a forked child knows none of them runs in it (the links
# and greenlets stayed in the parent: pyzmq#1330). Checked by fork hook, not by
# calling getpid() on every request.
log = logging.getLogger(__name__)

_PIPES: weakref.WeakSet[Pipe] = weakref.WeakSet()


def _forked() -> None:
    for pipe in _PIPES:
        pipe.started = False


os.register_at_fork(after_in_child=_forked)


@dataclass(frozen=True, slots=True)
class Receipt:
    """What ``push`` returns at once: the job's id (and its name)."""

    id: str
    name: str


class Pipe:
    """Pushes jobs to the configured workers: barrier, round-robin, at least once.

    Nothing happens at construction; `start` opens the links in the calling
    process (after a fork, never before: pyzmq#1330). ``push`` never blocks on
    a socket: before the barrier it waits up to READY_TIMEOUT, after it it
    queues or raises `Unavailable` at once. `drain` waits for what is owed;
    `close` drains (if `drain` did not), says DONE to the workers and closes
    the sockets.
    """

    def __init__(
        self,
        settings: PipeSettings | None = None,
        *,
        context: zmq.Context[Any] | None = None,
        name: str = "",
        **overrides: Any,
    ) -> None:
        """`settings`, or keyword settings as in app.config: ``workers=[...]``."""
        if settings is None or overrides:
            given = {"GREENPIPE_" + k.upper(): v for k, v in overrides.items()}
            settings = config.load_web([], os.environ, given)
        self.settings = settings
        self.dispatcher = Dispatcher(settings, context, name)
        self.history: History | None = None  # the dashboard's samples, once started
        self.started = False  # in this process: a forked child starts afresh
        self._drained = False  # drain() ran: close() need not drain again
        self._exposition: Any = None  # /metrics' registry, made when first scraped
        self.siblings: Siblings | None = None  # processes sharing the port, if any
        self._answering: gevent.Greenlet[Any, Any] | None = None  # answers the siblings
        self._replies = gevent.pool.Group()  # one greenlet per question being answered
        _PIPES.add(self)

    # -- lifecycle
    def start(self) -> None:
        """Start the dispatcher; ConfigError if gevent's patches are missing."""
        if not self.started:
            check_pipe_start()
            self.started = True
            self.dispatcher.start()
            workers = len(self.dispatcher.links)
            log.info("pipe started in pid %d, feeding %d %s", os.getpid(), workers,
                     "worker" if workers == 1 else "workers")  # fmt: skip
            if self.settings.dashboard:
                self.history = History(self.snapshot)
                self.history.start()
            prefix = self.dispatcher.admission.prefix
            self.siblings = Siblings.join(self.settings, prefix)
            if self.siblings is not None:
                self._answering = gevent.spawn(self._answer_siblings,
                                               self.siblings.questions)  # fmt: skip

    def _answer_siblings(self, questions: Iterable[Question]) -> None:
        """Answer what the siblings ask (`greenpipe.siblings`), each in a greenlet
        of its own: a cancel may wait for its record's group commit."""
        for question in questions:
            self._replies.spawn(self._reply_to_sibling, question)

    def _reply_to_sibling(self, question: Question) -> None:
        """This process's own record of a job, or its own cancel."""
        dispatcher = self.dispatcher
        asked = dispatcher.cancel if question.verb == "cancel" else dispatcher.status
        try:
            question.answer.set(asked(question.job_id))
        except Exception as exc:  # Unavailable: told to the asker; else its bug
            question.answer.set_exception(exc)

    def wait_ready(self, timeout: float) -> bool:
        """Block up to `timeout` s for the barrier (every worker said READY once)."""
        return self.dispatcher.wait_barrier(timeout)

    def drain(self, timeout: float | None = None) -> int:
        """Wait for acknowledgements (DRAIN_TIMEOUT by default); how many are owed.

        Takes no new job from then on (`push` raises `Unavailable`). Without a
        journal, what is still owed is written to DEAD_LETTER; with one, it
        stays in the journal for the next start.
        """
        if timeout is None:
            timeout = self.settings.drain_timeout
        self._drained = True
        return self.dispatcher.drain(timeout)

    def reconfigure(self, workers: Sequence[str]) -> tuple[list[str], list[str]]:
        """Make `workers` (as in WORKERS) the workers, live: (added, removed).

        New ones join after their READY; removed ones take no new job and
        leave once what they hold is acknowledged (or re-sent elsewhere).
        Raises ValueError for a bad worker address.
        """
        endpoints = config.parse_workers(",".join(workers))
        return self.dispatcher.reconfigure(endpoints)

    def close(self, timeout: float | None = None) -> int:
        """Drain (unless `drain` did), say DONE to the workers, close; jobs owed.

        What was accepted is never dropped: it is acknowledged within
        `timeout` (DRAIN_TIMEOUT by default), or stays in the journal, or,
        with JOURNAL_DIR=off, goes to DEAD_LETTER (see `drain`).
        """
        owed = 0
        if self.started and not self._drained:
            owed = self.drain(timeout)
        if self.history is not None:
            self.history.stop()
        if self.siblings is not None:
            self.siblings.close()
        if self._answering is not None:
            self._answering.kill(block=False)
        self.dispatcher.close()
        # A reply still waiting (a cancel noted after the last group) has lost
        # its asker: none outlives the pipe.
        self._replies.kill(timeout=1.0)
        return owed

    # -- jobs
    def push(
        self,
        name: str,
        *,
        json: Any = MISSING,
        body: bytes | str | None = None,
        content_type: str | None = None,
        wait: float = 0,
        idempotency_key: str = "",
        delay: float | None = None,
        at: datetime | None = None,
        queue: str = "default",
    ) -> Receipt | Outcome:
        """Hand one job named `name` to a worker; its handler gets ``job.json()``.

        It goes only to workers listening on `queue` (their QUEUES) that run
        `name`; no such worker known to the web: `Unavailable`, naming what
        the workers run; a queue name that breaks the rule: `BadJob`.

        With `delay` (seconds) or `at` (an aware datetime), one of them, the
        job waits in the web (journaled: a restart keeps it) and goes out at
        its time, never before (status ``scheduled`` meanwhile); a delay of 0
        is an ordinary push. Past MAX_DELAY: `BadJob`; MAX_SCHEDULED jobs
        waiting already: `Unavailable`.

        Returns a `Receipt` at once, or with ``wait=N`` the `Outcome` within N
        seconds (status TIMEOUT if none came: the job is still delivered at
        least once). Raises `Unavailable` when no worker can take it or the
        journal could not keep it (the extension answers 503 with Retry-After),
        ValueError for bad arguments (`TooLarge` for a body over MAX_BODY,
        `BadJob` for a bad idempotency key: a view answers 413 and 400). The
        same `idempotency_key` within IDEMPOTENCY_TTL returns the first job's
        id and creates no second job.
        """
        wait = check_wait(wait)
        raw_name, raw, kind = payload(name, json, body, content_type)
        self._check_size(raw)
        if idempotency_key:
            try:
                check_key(idempotency_key)
            except ValueError as exc:  # usually a client's header: a 400 in a view
                raise BadJob(f"push: {exc}") from None
        job = Envelope.new(b"", b"", b"", kind, raw, wait=wait > 0, name=raw_name)
        job.not_before = not_before(delay, at, self.settings.max_delay)
        job.queue = _queue(queue)
        return self._answer(self.submit(job, idempotency_key), name, wait)

    def forward(
        self,
        method: str,
        path: str,
        query: str = "",
        content_type: str = "",
        body: bytes = b"",
        wait: float = 0,
        queue: str = "default",
    ) -> Receipt | Outcome:
        """A request-shaped job (as web.py makes of each request), named by its path."""
        wait = check_wait(wait)
        raw_queue = _queue(queue)
        self._check_size(body)
        # The path is text, and a name: UTF-8, as READY announces names and
        # as a request's raw path arrives (latin-1 here cut "/résumé" wrong).
        job = Envelope.new(method.encode("ascii"), path.encode("utf-8"),
                           query.encode("latin-1"), content_type.encode("latin-1"),
                           body, wait=wait > 0)  # fmt: skip
        job.queue = raw_queue
        return self._answer(self.submit(job), path, wait)

    def _check_size(self, raw: bytes) -> None:
        if len(raw) > self.settings.max_body:
            raise TooLarge(
                f"push: the body is {len(raw)} bytes, over MAX_BODY "
                f"({self.settings.max_body}); send less, or raise MAX_BODY"
            )

    def _answer(self, job: Envelope, name: str, wait: float) -> Receipt | Outcome:
        if wait <= 0:
            return Receipt(job.id, name)
        return self.outcome(job, wait) or Outcome("", Status.TIMEOUT, b"", job.id)

    # The interface the HTTP routes use (greenpipe.routes).
    def submit(self, job: Envelope, key: str = "") -> Envelope:
        """Accept `job` (from `Envelope.new`) or raise `Unavailable`: see `push`."""
        if not self.started:
            self.start()
        return self.dispatcher.submit(job, key)

    def outcome(self, job: Envelope, timeout: float) -> Outcome | None:
        """What became of `job` (made with ``wait=True``) within `timeout` s."""
        if job.reply is None:  # a repeated idempotency key: the first job's outcome
            found = self.status(job.id)
            if found is None:
                return None
            status = Status(found["status"])
            if not (status.finished or status.waiting):
                return None  # queued or in flight: nothing to say yet
            return Outcome(found.get("worker", ""), status, outcome_payload(found),
                           job.id)  # fmt: skip
        return self.dispatcher.outcome(job, timeout)

    def cancel(self, job_id: str) -> dict[str, Any] | None:
        """Cancel a job this process accepted: what became of it; None if unknown.

        ``status`` tells: ``cancelled`` (it was queued or waiting for a retry,
        and will never run, across a restart too); ``in_flight`` with
        ``cancelling`` (a worker runs it: `Cancelled` is thrown into its
        handler and it is not retried); anything else is the status of a job
        that finished before the cancel (nothing changed). Idempotent.
        """
        if not self.started:
            self.start()
        found = self.dispatcher.cancel(job_id)
        if found is None and self.siblings is not None and not self.owns(job_id):
            found = self.siblings.cancel(job_id)  # another process sharing the port
        # Finished before a restart (the store), after every live holder was
        # asked: a job replayed and running again is cancelled, not "done".
        return self.dispatcher.stored(job_id) if found is None else found

    def redrive(self, job_id: str) -> Envelope:
        """Send a dead-lettered job again as a new job (the dashboard's button).

        Raises KeyError if the dead-letter file has no such job, `Unavailable`
        as `push`. Within IDEMPOTENCY_TTL a repeat returns the first re-send.
        """
        if not self.started:
            self.start()
        return Envelope.new(b"", b"", b"", b"", b"").named(
            self.dispatcher.resender.redrive(job_id)
        )

    def failed_jobs(
        self, name: str | None = None, status: str | None = None
    ) -> list[dict[str, Any]]:
        """The jobs kept in DEAD_LETTER (oldest first), without their bodies.

        Each has ``status`` ``failed`` (its handler failed; no retry policy) or
        ``dead`` (given up on: ``reason``), its ``name``, ``errors``, ``runs``,
        ``time``, ``body_bytes``, and ``resent_as`` once re-sent. Filtered by
        job `name` and by `status`. Read from the file: any process sharing
        it answers the same. Raises OSError if the file cannot be read.
        """
        return self.dispatcher.dead_letters.kept(name, status)

    def resend(
        self,
        *ids: str,
        name: str | None = None,
        every: bool = False,
        again: bool = False,
    ) -> Resent:
        """Send kept jobs (`failed_jobs`) again, each as a new job, at most once.

        By id, or all named `name`, or ``every=True``. A job re-sent before,
        by any process sharing the file, is not sent again: it is in
        ``already`` with the job it was sent as. ``again=True`` re-sends those
        whose job never ran (a web killed between the mark and the journal
        write; see `greenpipe.resend`); it needs the result store. Raises
        ValueError if nothing is chosen, OSError if the file cannot be read.
        """
        chosen = chosen_ids(ids)
        if (bool(chosen), name is not None, every).count(True) != 1:
            raise ValueError(
                "resend: give one of job ids, name=, or every=True (every kept "
                f"job); got ids={chosen[:3]!r}, name={name!r}, every={every!r}"
            )
        if not self.started:
            self.start()
        known = None
        if self.dispatcher.keeper is not None:
            known = lambda job_id: self.status(job_id) is not None  # noqa: E731
        return self.dispatcher.resender.resend(chosen, name, again, known)

    def jobs(
        self, status: str | None = None, name: str | None = None
    ) -> list[dict[str, Any]]:
        """The jobs this process holds and has not finished, as `status` answers
        each: ``queued`` (in the order they go), ``scheduled`` and ``retrying``
        (by time), ``in_flight``; filtered by `status` and job `name`.

        This process's only: with several on one port, ask each (OPS_PORT).
        ValueError for a status not among those four.
        """
        return self.dispatcher.held(status, name)

    def running(self, limit: int = 20) -> list[dict[str, Any]]:
        """The jobs running now whose handler reported progress
        (``job.progress``), as `status` answers each, the latest report first,
        at most `limit`. This process's only, as `jobs`."""
        return self.dispatcher.reporting(limit)

    def purge(
        self, name: str | None = None, *, every: bool = False, in_flight: bool = False
    ) -> Purged:
        """Cancel this process's backlog of jobs named `name` (or ``every=True``):
        each queued, scheduled or retrying one, as `cancel` does (journaled
        first: a restart never runs it); running ones too with `in_flight`.
        Other names are untouched. Returns a `Purged`; ValueError if neither
        or both of `name` and `every` are given.
        """
        if (name is not None) == every:
            raise ValueError(
                f"purge: give a job name, or every=True (every job); got "
                f"name={name!r}, every={every!r}"
            )
        if not self.started:
            self.start()
        statuses = WAITING + (("in_flight",) if in_flight else ())
        d = self.dispatcher
        return purge(d.held(None, name), d.cancel, statuses, d.status)

    @property
    def name(self) -> str:
        """This web as the workers' logs name it (set it before `start`)."""
        return self.dispatcher.name

    @name.setter
    def name(self, value: str) -> None:
        self.dispatcher.name = value

    def workers(self) -> list[str]:
        """The workers' names, in configured order."""
        return [link.name for link in self.dispatcher.links]

    def dead_letters(self, count: int) -> list[dict[str, Any]]:
        """The last `count` dead letters (no bodies), newest last."""
        return self.dispatcher.dead_letters.tail(count)

    @property
    def dead_letter_file(self) -> str:
        return self.dispatcher.dead_letters.path

    def snapshot(self) -> Snapshot:
        """Every figure of this process now (what /stats and /metrics show)."""
        return self.dispatcher.snapshot()

    def status(self, job_id: str) -> dict[str, Any] | None:
        """queued, in_flight, done, failed, dead, or None if unknown or expired.

        A job another process sharing this port accepted is asked of that
        process (on this host; up to a second, else `Unavailable`).
        """
        found = self.dispatcher.status(job_id)
        if found is None and self.siblings is not None and not self.owns(job_id):
            found = self.siblings.status(job_id)
        # The store last: a job replayed after a crash answers where it is now,
        # not what its first run left there.
        return self.dispatcher.stored(job_id) if found is None else found

    def owns(self, job_id: str) -> bool:
        return self.dispatcher.owns(job_id)

    def health(self) -> tuple[bool, dict[str, Any]]:
        return self.dispatcher.health()

    def metrics(self) -> bytes:
        """The Prometheus text exposition of this process's figures."""
        from greenpipe.metrics import Exposition

        if self._exposition is None:
            self._exposition = Exposition(self.snapshot)
        return self._exposition.render()  # type: ignore[no-any-return]

    def stats(self) -> dict[str, Any]:
        return self.dispatcher.stats()


def _queue(queue: str) -> bytes:
    """push's `queue` as jobs carry it, or `BadJob` naming it."""
    try:
        return queue_name(queue)
    except ValueError as exc:
        raise BadJob(f"push: {exc}") from None
