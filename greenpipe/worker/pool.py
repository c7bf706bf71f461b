"""The handlers running in a worker: started, timed, cancelled, reaped, counted.

Handlers run in raw greenlets (a gevent.pool costs a third of the time per
job), at most CONCURRENCY at once. A run's outcome goes to its web's `Peer`
(for the next ACKS) and sets `wake`, the sender's event: nothing here sends.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
from greenlet import getcurrent

from greenpipe import protocol
from greenpipe.config import WorkerSettings
from greenpipe.credit import Shares
from greenpipe.handling import NO_POLICY, Cancelled, JobTimeout, Policy, run_handler
from greenpipe.jobs import Handler, Job
from greenpipe.throttle import Throttle
from greenpipe.worker.peers import Peer

log = logging.getLogger("greenpipe.worker")  # one logger for the package's lines
monotonic = time.monotonic

NO_DEADLINE = float("inf")


class Pool:
    """The running handlers, their deadlines and cancels, and the run figures."""

    def __init__(
        self,
        handler: Handler,
        settings: WorkerSettings,
        shares: Shares,
        wake: gevent.event.Event,
    ) -> None:
        self.handler = handler
        self._concurrency = settings.concurrency
        self._shares = shares  # each run is held by its web's account until it ends
        self._wake = wake  # set at every outcome: the sender has ACKS to send
        self.busy = 0  # handlers started and not ended
        self.active: dict[Any, tuple[float, Job]] = {}  # running: deadline, job
        # job id -> the greenlets that hold it, started or not (CANCEL); two
        # when a web re-sent a job this worker still runs (after a loss)
        self.running: dict[bytes, list[Any]] = {}
        self.cancelled: set[Any] = set()  # greenlets a CANCEL reached before they ran
        self.overrunning = 0  # handlers past their time limit at the last check
        self._thrown: set[Any] = set()  # handlers JobTimeout was thrown into
        # The handler's policy by job name (a `Handlers` registry has one);
        # RETRIES and RETRY_BACKOFF make the policy of handlers declaring none.
        self._policy: Callable[[str], Policy] = getattr(
            handler, "policy", lambda name: NO_POLICY
        )
        self._default_policy = NO_POLICY
        if settings.retries:
            self._default_policy = Policy(
                settings.retries,
                settings.retry_backoff,
                max(NO_POLICY.max_backoff, settings.retry_backoff),
            )
        self._slot = gevent.event.Event()  # set when a handler returns
        self.idle = gevent.event.Event()  # set when none runs
        self.idle.set()
        self._throttle = Throttle(log)
        self.received = self.handled = self.failed = 0
        self.ended: dict[int, int] = {}  # runs not OK, by result status: the summary
        self.run_sum = 0.0  # seconds in handlers, all jobs
        self.run_counts = [0] * (len(protocol.RUN_BUCKETS) + 1)

    def start(self, peer: Peer, job: Job) -> None:
        """Start a run of `job` for `peer`; blocks while CONCURRENCY handlers run."""
        self.received += 1
        self._shares.started(peer.account)  # held from now: running or waiting here
        while self.busy >= self._concurrency:
            self._slot.clear()  # full: stop reading until a handler returns
            self._slot.wait()
        self.busy += 1
        self.idle.clear()
        job.report_to(peer.progress)  # its progress goes to its web's heartbeats
        runner = gevent.spawn_raw(self._run, peer, job)  # runs at the next switch
        self.running.setdefault(job.raw_id, []).append(runner)

    def _run(self, peer: Peer, job: Job) -> None:
        me = getcurrent()
        started = monotonic()
        policy = self._policy(job.name)
        if policy is NO_POLICY:
            policy = self._default_policy
        if policy.timeout is not None:
            job.timeout = policy.timeout  # the handler's own limit wins
        deadline = started + job.timeout if job.timeout else NO_DEADLINE
        self.active[me] = (deadline, job)
        try:
            if me in self.cancelled:  # a CANCEL came before this greenlet ran
                log.warning("%s: job %s %s cancelled before it started",
                            job.worker, job.id, job.name)  # fmt: skip
                status, payload = protocol.CANCELLED, b"cancelled before it started"
            else:
                status, payload = run_handler(self.handler, job, job.worker, policy)
        finally:
            self._ended(me, peer, job)
        self._count(monotonic() - started, status)
        peer.answer(job.raw_id, status, payload)
        self._wake.set()

    def _ended(self, me: Any, peer: Peer, job: Job) -> None:
        """A run's greenlet is done with its job: free its slot and its credit."""
        del self.active[me]
        self.cancelled.discard(me)
        job.report_to(None)
        if job.raw_id in peer.progress:  # its last report goes before its ACK
            peer.progress_due = True
        runners = self.running[job.raw_id]
        runners.remove(me)
        if not runners:
            del self.running[job.raw_id]
        self.busy -= 1
        self._shares.finished(peer.account)
        self._slot.set()
        if not self.busy:
            self.idle.set()

    def _count(self, took: float, status: int) -> None:
        self.run_sum += took
        self.run_counts[bisect_left(protocol.RUN_BUCKETS, took)] += 1
        self.handled += 1
        if status != protocol.OK:
            self.failed += 1  # (the web's figures count retries and cancels here)
            self.ended[status] = self.ended.get(status, 0) + 1

    def reap(self, now: float) -> None:
        """Interrupt handlers past their deadline (checked every heartbeat).

        `JobTimeout` is thrown again at every heartbeat until the handler ends:
        one that swallowed it (``except BaseException``) keeps getting it, and
        is counted as overrunning meanwhile (heartbeats, /stats, /metrics).
        Only cooperative handlers can be interrupted; one holding the event
        loop stops the heartbeats too, and the web treats the worker as frozen.
        """
        overrunning, thrown = 0, set()
        for runner, (deadline, job) in list(self.active.items()):
            if deadline <= now:
                thrown.add(runner)
                if runner in self._thrown:
                    overrunning += 1  # it had one heartbeat to end, and did not
                    self._throttle.warning(
                        f"overrun:{job.name}",
                        "%s: job %s (%s) still runs %.1f s past its %g s limit",
                        job.worker, job.id, job.name, now - deadline, job.timeout,
                    )  # fmt: skip
                self._interrupt(runner, JobTimeout)
        self.overrunning, self._thrown = overrunning, thrown

    def cancel(self, ids: bytes) -> None:
        """CANCEL from a web: stop every run of those jobs this worker holds.

        A run whose greenlet has started gets `Cancelled` thrown in; one not
        started yet (its JOBS read in the same batch) answers CANCELLED
        without running the handler.
        """
        for raw_id in ids.split():
            for runner in self.running.get(raw_id, ()):
                if runner in self.active:
                    self._interrupt(runner, Cancelled)
                else:
                    self.cancelled.add(runner)

    def _interrupt(self, runner: Any, exc: type[BaseException]) -> None:
        """Throw `exc` into a handler's greenlet at the hub's next turn, if it runs.

        As `gevent.kill`, which is asynchronous too, but a handler that returned
        meanwhile is left alone: a throw into its dead greenlet would raise in
        the hub instead (a traceback on stderr for each).
        """

        def throw() -> None:
            if runner in self.active:
                runner.throw(exc)

        gevent.get_hub().loop.run_callback(throw)
