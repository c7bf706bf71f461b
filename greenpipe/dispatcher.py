"""The web side of the bridge: admission, the barrier, and the orchestration.

Request greenlets call `Dispatcher.submit`, which only queues the job (bounded)
and wakes the dispatcher greenlet; that greenlet sends queued jobs in one batch
per worker (`flush`), and every heartbeat it pings and checks liveness and ack
deadlines (`tick`). The links' reader greenlets hand in acknowledgements and
control messages. Each link keeps its own state and jobs (`greenpipe.link`);
the choice of the next one is `greenpipe.rotation`. Nothing here waits on a
socket, so nothing on the request path does either.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterator, Sequence

import gevent
import gevent.event
import zmq.green as zmq
from gevent.hub import Waiter
from greenlet import getcurrent

from greenpipe import protocol
from greenpipe.config import Endpoint, PipeSettings, loopback
from greenpipe.curve import fingerprint, load_public, load_secret
from greenpipe.deadletter import DeadLetters
from greenpipe.errors import LinkError, ProtocolError, Unavailable
from greenpipe.jobs import Envelope, Outcome, Status
from greenpipe.journal import Journal, JournalError
from greenpipe.link import (
    HANDSHAKE_FAILED,
    LEAVING,
    READY,
    Link,
    OnEvent,
    OnMessage,
    PushLink,
)
from greenpipe.rotation import Rotation
from greenpipe.status import JobRecords
from greenpipe.throttle import Throttle

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0, 30.0)  # fmt: skip
COMMIT_TIMEOUT = 5.0  # seconds a request waits for its group's journal write
MAX_KEYS = 100_000  # idempotency keys remembered at once
ERROR_CHARS = 200  # of a failure's error text kept for the dashboard


_parked: object = None  # the last greenlet that waited for a group commit


def took_turn() -> bool:
    """True if the calling greenlet waited for a group commit since last asked.

    A request that waited has given the dispatcher (and everyone else) a turn:
    the web server's yield after each keep-alive request is then redundant.
    """
    global _parked
    me = getcurrent()
    if _parked is me:
        _parked = None
        return True
    return False


class _Group:
    """Jobs submitted since the journal's last write: their 202s wait for it.

    Each waiting request parks on a bare `gevent.hub.Waiter`, and one hub
    callback wakes them all: a `gevent.event.Event` per group measured several
    per cent of the web's CPU (its thread-safe link machinery, per waiter).
    """

    __slots__ = ("waiters", "settled", "error")

    def __init__(self) -> None:
        self.waiters: list[Waiter] = []
        self.settled = False
        self.error = ""

    def wait(self) -> None:
        global _parked
        if not self.settled:
            waiter = Waiter()
            self.waiters.append(waiter)
            waiter.get()
            _parked = getcurrent()

    def settle(self, error: str = "") -> None:
        self.settled, self.error = True, error
        if self.waiters:
            gevent.get_hub().loop.run_callback(self._wake_all)

    def _wake_all(self) -> None:  # in the hub: where a Waiter is switched from
        for waiter in self.waiters:
            waiter.switch(None)


# Makes the link for one configured worker (tests pass one without sockets).
LinkFactory = Callable[[int, Endpoint, OnMessage, OnEvent], Link]


class Dispatcher:
    """Feeds the configured workers; see DESIGN.md for the invariants it keeps.

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
        self._context = context or zmq.Context.instance()
        self._clock = clock
        make = link_factory or self._make_link
        self.links: list[Link] = [
            make(index, endpoint, self._on_message, self._on_event)
            for index, endpoint in enumerate(settings.workers)
        ]
        self._acknowledged = [link for link in self.links if link.reliable]
        self._curve(settings)
        self._rotation = Rotation(self.links)
        self.records = JobRecords(settings.status_keep, settings.status_ttl, clock)
        self._fresh: deque[Envelope] = deque()  # accepted, never sent
        self._retry: deque[Envelope] = deque()  # taken back from a lost worker
        self._prefix = secrets.token_hex(4) + "-"
        self._seq = itertools.count(1)
        self._barrier = gevent.event.Event()
        self._wake = gevent.event.Event()
        self._settled = gevent.event.Event()
        self._draining = False
        self._closed = False
        self._greenlet: gevent.Greenlet | None = None
        self._job_timeout_ms = round(settings.job_timeout * 1000)
        # A worker enforces the job time limit itself; this is the web's backstop.
        self._ack_deadline = 2 * settings.job_timeout + settings.heartbeat_timeout
        self.dead_letters = DeadLetters(settings.dead_letter)
        self.journal: Journal | None = None
        if settings.journal_dir != "off":
            self.journal = Journal(
                settings.journal_dir, settings.journal_sync, settings.journal_corrupt
            )
            self.journal.keys = self._live_keys  # carried across dropped segments
        self._incoming: list[Envelope] = []  # submitted, not yet journaled
        self._incoming_keys: list[bytes] = []
        self._group = _Group()
        self._committing = False  # a group's write and sync are under way
        self._keys: dict[str, tuple[str, float]] = {}  # Idempotency-Key -> job id
        self.replayed = 0
        self._throttle = Throttle(log)
        self.accepted = self.acked = self.failed = self.resent = self.rejected = 0
        self.stray_acks = self.malformed = 0
        self.added = self.removed = 0  # workers added and removed live (SIGHUP)
        self._removing: list[Link] = []  # removed: finishing what they hold
        self.redriven = 0  # dead letters re-sent (the dashboard's button)
        # (time, id, worker, error): the latest failures, for the dashboard.
        self.recent_failures: deque[tuple[float, str, str, str]] = deque(maxlen=20)
        self.rejected_by: dict[str, int] = {}  # 503s by reason (see _reject)
        # Accepted -> acknowledged, seconds: a count per bucket (+Inf last), sum.
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0

    _curve_keys: tuple | None = None  # (this web's keypair, workers' public key)

    def _curve(self, settings: PipeSettings) -> None:
        """CURVE on every link when CURVE_SECRET is set; else warn beyond loopback."""
        if settings.curve_secret:
            keys = load_secret(settings.curve_secret, "CURVE_SECRET")
            server = load_public(settings.curve_server, "CURVE_SERVER")
            self._curve_keys = (keys, server)
            for link in self.links:
                link.curve = self._curve_keys
            log.info("CURVE on: this web's key %s, workers' key %s",
                     fingerprint(keys.public), fingerprint(server))  # fmt: skip
            return
        remote = [link.name for link in self.links
                  if not loopback(link.endpoint.host)]  # fmt: skip
        if remote:
            log.warning(
                "workers beyond loopback without CURVE (%s): jobs and results "
                "cross the network in plain text and anyone there can impersonate "
                "a worker; set GREENPIPE_CURVE_SECRET and GREENPIPE_CURVE_SERVER "
                "(python -m greenpipe keys)",
                ", ".join(remote),
            )

    def _make_link(
        self, index: int, endpoint: Endpoint, on_message: OnMessage, on_event: OnEvent
    ) -> Link:
        kind = Link if endpoint.reliable else PushLink
        return kind(index, endpoint, self._context, on_message, on_event)

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Replay the journal (if any), open the links, start the greenlet.

        Raises ConfigError or JournalError if the journal cannot be opened.
        """
        if self.journal is not None:
            replay = self.journal.open()
            for job in replay.jobs:
                job.accepted_at = self._clock()  # for the latency histogram
            self._fresh.extend(replay.jobs)
            now = time.time()
            ttl = self.settings.idempotency_ttl
            self._keys = {k: v for k, v in replay.keys.items() if now - v[1] < ttl}
            self.replayed = len(replay.jobs)
            log.info(
                "journal: %s (slot %d, sync %s): replaying %d jobs owed%s",
                self.journal.path,
                self.journal.slot,
                self.journal.sync,
                self.replayed,
                f", adopted slots {replay.adopted}" if replay.adopted else "",
            )
        for link in self.links:
            link.open()
        self._greenlet = gevent.spawn(self._run)

    def drain(self, timeout: float) -> int:
        """Wait up to `timeout` s until every accepted job is acknowledged.

        Returns how many were not; they are written to the dead-letter file
        (those already sent may still be handled: at least once, not exactly).
        """
        self._draining = True
        self._check_settled()
        self._settled.wait(timeout)
        left = 0
        for job in itertools.chain(self._retry, self._fresh):
            self.dead_letters.write(job, "web stopped before a worker took it", "")
            left += 1
        if self.journal is not None:  # they stay owed: the next start replays them
            left = self.outstanding()
            if left:
                log.warning(
                    "journal: %d jobs unacknowledged at stop stay in %s and are "
                    "replayed at the next start",
                    left,
                    self.journal.path,
                )
            return left
        for job in itertools.chain(self._retry, self._fresh):
            self.dead_letters.write(job, "web stopped before a worker took it", "")
            left += 1
        self._retry.clear()
        self._fresh.clear()
        for link in self.links:
            for job in link.jobs.values():
                reason = (
                    "web stopped before it was acknowledged (it may still be handled)"
                )
                self.dead_letters.write(job, reason, link.name)
                left += 1
            link.jobs.clear()
        return left

    def close(self) -> None:
        """Say DONE to every worker (it forgets this web) and close the sockets."""
        self._closed = True
        for link in self._acknowledged:
            if link.state in (READY, LEAVING):
                try:
                    link.send([protocol.DONE])
                except LinkError:
                    pass
        for link in self.links:
            link.close()
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
        if self.journal is not None:
            self.journal.close()

    def reconfigure(self, endpoints: Sequence[Endpoint]) -> tuple[list[str], list[str]]:
        """Make `endpoints` the workers, live; returns (added, removed) names.

        A new worker joins the rotation after its READY (the barrier, met
        already, is not waited for again). A removed one takes no new job; it
        leaves once what it holds is acknowledged, or re-sent elsewhere if it
        is lost meanwhile. Round-robin goes on over the new list, in its order.
        """
        current = {link.endpoint.address: link for link in self.links
                   if link not in self._removing}  # fmt: skip
        wanted = {endpoint.address: endpoint for endpoint in endpoints}
        added, removed = [], []
        for address, endpoint in wanted.items():
            if address in current:
                continue
            link = self._make_link(len(self.links), endpoint, self._on_message,
                                   self._on_event)  # fmt: skip
            link.curve = self._curve_keys
            link.ever_ready = self._barrier.is_set()  # the barrier is not re-run
            self.links.append(link)
            if link.reliable:
                self._acknowledged.append(link)
            link.open()
            added.append(link.name)
        for address, link in current.items():
            if address not in wanted:
                self._removing.append(link)
                link.leave()  # no new jobs; its acknowledgements still count
                removed.append(link.name)
                self._retire_if_done(link)
        self.added += len(added)
        self.removed += len(removed)
        if not self._barrier.is_set() and all(each.ever_ready for each in self.links):
            self._barrier.set()  # the workers it waited for were removed
        self._wake.set()
        return added, removed

    def _retire_if_done(self, link: Link) -> None:
        """A removed worker holding nothing more: say DONE, close, forget it."""
        if link not in self._removing or link.jobs:
            return
        if link.state in (READY, LEAVING):
            try:
                link.send([protocol.DONE])
            except LinkError:
                pass
        link.close()
        self._removing.remove(link)
        self.links.remove(link)
        if link in self._acknowledged:
            self._acknowledged.remove(link)
        log.info("worker %s removed (sent %d, acknowledged %d)", link.name,
                 link.sent, link.acked)  # fmt: skip

    def redrive(self, job_id: str) -> Envelope:
        """Submit a dead-lettered job again, from the dead-letter file, as a new job.

        Raises KeyError if the file has no such job, `Unavailable` as `submit`.
        Within IDEMPOTENCY_TTL a second re-send of the same job returns the
        first one's job (a double click sends once).
        """
        found = self.dead_letters.find(job_id)
        if found is None:
            raise KeyError(job_id)
        method, path, query, content_type, body, name = found
        before = self.accepted
        job = self.submit(method, path, query, content_type, body, name=name,
                          key=f"greenpipe-redrive:{job_id}")  # fmt: skip
        if self.accepted > before:  # a new job, not a repeated click
            self.redriven += 1
            log.warning("dead letter %s re-sent as job %s", job_id, job.id)
        return job

    # -- the request path -----------------------------------------------------------

    def submit(
        self,
        method: bytes,
        path: bytes,
        query: bytes,
        content_type: bytes,
        body: bytes,
        reply: bool = False,
        name: bytes = b"",
        key: str = "",
    ) -> Envelope:
        """Accept one job, or raise `Unavailable` (a 503) without waiting long.

        Before the barrier is met, waits for it up to READY_TIMEOUT; after that,
        never waits: the job is queued and the dispatcher greenlet sends it.
        Jobs beyond what the ready workers have credit for are "waiting", and
        at most MAX_PENDING of them are accepted. With a journal, returns once
        the job is written (group commit by the dispatcher greenlet), or raises
        `Unavailable` naming the journal's error: never a 202 for a job not
        kept. A repeated idempotency `key` returns its first job, creating none.
        """
        if key:
            first = self._keys.get(key)
            if (
                first is not None
                and time.time() - first[1] < self.settings.idempotency_ttl
            ):
                return Envelope(first[0], method, path, query, content_type, b"")
        if not self._barrier.is_set() and not self._barrier.wait(
            self.settings.ready_timeout
        ):
            self._reject("barrier")
            raise Unavailable(self._barrier_message(), retry_after=2)
        if self._draining:
            self._reject("stopping")
            raise Unavailable("this web process is stopping; retry on another", 1)
        for link in self.links:
            if link.state is READY:
                break
        else:
            self._reject("no_worker")
            raise Unavailable(
                f"no worker can take jobs now ({self._states()}); retry soon"
            )
        queued = len(self._fresh) + len(self._retry)
        if queued >= self.settings.max_pending:  # only then can too many be waiting
            waiting = queued - sum(
                max(0, link.credit - len(link.jobs))
                for link in self.links
                if link.state is READY
            )
            if waiting >= self.settings.max_pending:
                self._reject("max_pending")
                raise Unavailable(
                    f"{waiting} jobs already wait for a worker (MAX_PENDING="
                    f"{self.settings.max_pending}); retry soon, or add workers"
                )
        job = Envelope(
            # A fixed length (ab counts a response of another length as failed).
            self._prefix + format(next(self._seq), "010x"),
            method,
            path,
            query,
            content_type,
            body,
            gevent.event.AsyncResult() if reply else None,
            name,
        )
        job.accepted_at = self._clock()
        if key:
            self._remember(key, job.id)
        if self.journal is None:
            self._fresh.append(job)
            self.accepted += 1
            self._wake.set()
            return job
        group = self._group
        self._incoming.append(job)
        self._incoming_keys.append(key.encode("latin-1") if key else b"")
        self._wake.set()
        # No timer per request (arming one costs more than the write): the
        # dispatcher greenlet always settles the group, and a stalled sync is
        # bounded by the group's own deadline (see _commit).
        group.wait()
        if group.error:
            self._reject("journal")
            self._keys.pop(key, None)
            raise Unavailable(f"job not accepted: {group.error}", 2)
        self.accepted += 1
        return job

    def _reject(self, reason: str) -> None:
        self.rejected += 1
        self.rejected_by[reason] = self.rejected_by.get(reason, 0) + 1

    def _remember(self, key: str, job_id: str) -> None:
        keys = self._keys
        keys[key] = (job_id, time.time())
        if len(keys) > MAX_KEYS:
            del keys[next(iter(keys))]

    def _live_keys(self) -> dict[str, tuple[str, float]]:
        horizon = time.time() - self.settings.idempotency_ttl
        return {k: v for k, v in self._keys.items() if v[1] >= horizon}

    def _commit(self) -> None:
        """Journal every job submitted since the last write, then release them.

        With JOURNAL_SYNC=batch the write and its fdatasync run in a greenlet
        of their own, one group at a time: the dispatcher goes on sending what
        is already journaled and reading acks meanwhile, and the jobs that
        arrive during a sync form the next group.
        """
        if self._committing:
            return  # the group after the one being synced waits its turn
        jobs, keys, group = self._incoming, self._incoming_keys, self._group
        self._incoming, self._incoming_keys, self._group = [], [], _Group()
        if self.journal is not None and self.journal.sync == "batch":
            self._committing = True
            gevent.spawn(self._write_group, jobs, keys, group)
        else:
            self._write_group(jobs, keys, group)

    def _write_group(
        self, jobs: list[Envelope], keys: list[bytes], group: _Group
    ) -> None:
        journal = self.journal
        assert journal is not None
        stalled = JournalError(
            f"the journal write took over {COMMIT_TIMEOUT:g} s ({journal.path}); "
            "is the disk stalled?"
        )
        try:
            with gevent.Timeout(COMMIT_TIMEOUT, stalled):  # one timer per group
                journal.append_jobs(jobs, keys)
        except JournalError as exc:
            group.settle(str(exc))
        else:
            self._fresh.extend(jobs)
            group.settle()
        finally:
            self._committing = False
            self._wake.set()  # send these, and write the next group

    @staticmethod
    def outcome(job: Envelope, timeout: float) -> Outcome | None:
        """Wait up to `timeout` s for what became of a job submitted with reply."""
        assert job.reply is not None, "submit(..., reply=True) first"
        return job.reply.wait(timeout)

    # -- the dispatcher greenlet ----------------------------------------------------

    def _run(self) -> None:
        interval = self.settings.heartbeat
        clock = self._clock
        next_tick = clock()
        while not self._closed:
            self._wake.wait(max(0.0, next_tick - clock()))
            self._wake.clear()
            try:
                self.flush()
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
        if self._incoming:
            self._commit()
        batches: dict[Link, list[Envelope]] = {}
        for queue, suspect in ((self._retry, True), (self._fresh, False)):
            while queue:
                link = self._rotation.choose(suspect)
                if link is None:
                    break
                job = queue.popleft()
                job.attempt += 1
                link.assign(job)
                batches.setdefault(link, []).append(job)
        for link, jobs in batches.items():
            self._send(link, jobs)

    def _send(self, link: Link, jobs: list[Envelope]) -> None:
        sent = 0
        try:
            sent = link.deliver(jobs, self._clock(), self._job_timeout_ms)
        except LinkError as exc:
            self._throttle.warning(f"send:{link.name}", "%s", exc)
        if not link.reliable:  # at most once: done when libzmq has it
            for job in jobs[:sent]:
                self._finish(job, Status.UNACKNOWLEDGED, link.name)
        if sent == len(jobs):
            return
        # Not handed to libzmq: take them back in order, and reconnect the link.
        unsent = jobs[sent:]
        link.give_back(unsent)
        for job in reversed(unsent):
            job.attempt -= 1
            (self._retry if job.attempt else self._fresh).appendleft(job)
        self._lose(link, "cannot send: connection not complete")

    def tick(self) -> None:
        """Every HEARTBEAT: greet, ping, and lose the silent and the overdue."""
        if self.journal is not None:
            self.journal.flush_acks()
        now = self._clock()
        timeout = self.settings.heartbeat_timeout
        for link in self._acknowledged:
            if link.needs_hello():
                if link.connected:  # in case a HELLO went to a worker that died since
                    self._hello(link)
                continue
            link.send(protocol.encode_ping(link.credit_seq))
            silent = now - link.last_seen
            if silent > timeout:
                # A busy web may not have read what arrived: silence must be the
                # worker's, not this loop's.
                link.receive_queued()
                silent = now - link.last_seen
            if link.state not in (READY, LEAVING):
                continue  # receive_queued() handed in a BYE or the link was lost
            if silent > timeout:
                self._lose(link, f"no heartbeat for {silent:.1f} s")
            elif link.jobs:
                oldest = next(iter(link.jobs.values()))
                if now - oldest.sent_at > self._ack_deadline:
                    self._lose(
                        link,
                        f"job {oldest.id} not acknowledged within "
                        f"{self._ack_deadline:.0f} s",
                    )

    def _hello(self, link: Link) -> None:
        link.send(protocol.encode_hello(self.settings.heartbeat, self.name))

    # -- what the links hand in ------------------------------------------------------

    def _on_message(self, link: Link, frames: list[bytes]) -> None:
        try:
            self._handle(link, frames)
        except Exception:  # a bug must not kill the link's reader
            self._throttle.exception(f"bug:{link.name}", "dispatcher: unexpected error")

    def _handle(self, link: Link, frames: list[bytes]) -> None:
        kind = frames[0]
        link.last_seen = self._clock()
        if kind == protocol.ACKS:
            self._acks(link, frames)
        elif kind == protocol.HEARTBEAT:
            if len(frames) > 1:
                try:
                    link.figures = protocol.decode_heartbeat(frames)
                except ProtocolError as exc:
                    self._malformed(link, str(exc))
        elif kind == protocol.READY:
            self._ready(link, frames)
        elif kind == protocol.CREDIT:
            self._credit(link, frames)
        elif kind == protocol.BYE:
            self._bye(link, frames)
        else:
            self._malformed(link, f"unknown message kind {kind[:8]!r}")

    def _acks(self, link: Link, frames: list[bytes]) -> None:
        if len(frames) < 2:
            self._malformed(link, "ACKS without its frame of ids")
            return
        done = 0
        # Per job on the hot path: bound methods and one clock read per message.
        settle, store = link.settle, self.records.store
        worker, now = link.name, self._clock()
        journaled: list[Envelope] = []
        keep = journaled.append if self.journal is not None else None
        counts, bounds, waited = self.latency_counts, LATENCY_BUCKETS, 0.0
        for key, status, payload in self._outcomes(link, frames):
            job = settle(key)
            if job is None:
                self.stray_acks += 1
                continue
            done += 1
            outcome = Status.OK
            if status != protocol.OK:
                link.failed += 1
                self.failed += 1
                outcome = Status.FAILED
                error = payload[:ERROR_CHARS].decode("utf-8", "replace")
                self.recent_failures.append((time.time(), job.id, worker, error))
            store[job.id] = (outcome, worker, job.attempt, payload, now)
            took = now - job.accepted_at
            waited += took
            counts[bisect_left(bounds, took)] += 1
            if keep is not None:
                keep(job)
            if job.reply is not None:
                job.resolve(worker, outcome, payload)
        self.latency_sum += waited
        self.records.trim()
        if journaled:
            self.journal.acked(journaled)  # type: ignore[union-attr]
        link.acked += done
        self.acked += done
        if self._removing and not link.jobs:
            self._retire_if_done(link)
        if self._fresh or self._retry:
            self._wake.set()
        if self._draining:
            self._check_settled()

    def _outcomes(
        self, link: Link, frames: list[bytes]
    ) -> Iterator[tuple[bytes, int, bytes]]:
        """(job id, status, payload) for each job an ACKS message reports done."""
        for key in frames[1].split():
            yield key, protocol.OK, b""
        for frame in itertools.islice(frames, 2, None):
            try:
                yield protocol.decode_result(frame)
            except ProtocolError as exc:
                self._malformed(link, str(exc))

    def _credit(self, link: Link, frames: list[bytes]) -> None:
        """The worker moved this web's share of its capacity (shared credit)."""
        try:
            change, seq = protocol.decode_credit(frames)
        except ProtocolError as exc:
            self._malformed(link, str(exc))
            return
        link.credit = max(0, link.credit + change)
        link.credit_seq = seq  # the next PING tells the worker it was applied
        if change > 0 and (self._fresh or self._retry):
            self._wake.set()

    def _ready(self, link: Link, frames: list[bytes]) -> None:
        try:
            version, credit, max_frame, worker_name, seq = protocol.decode_ready(frames)
        except ProtocolError as exc:
            self._malformed(link, str(exc))
            return
        if version != protocol.VERSION:
            self._throttle.error(
                f"version:{link.name}",
                "worker %s speaks protocol %d, this web %d; "
                "run the same greenpipe on both",
                link.name,
                version,
                protocol.VERSION,
            )
            return
        joined = link.ready(credit, max_frame, worker_name)
        link.credit_seq = seq
        if joined is None:
            return  # an answer to a repeated HELLO
        log.info("worker %s %s: credit %d (%s)", link.name, joined, credit, worker_name)
        if max_frame < self.settings.max_body + protocol.JOB_OVERHEAD:
            log.warning(
                "worker %s accepts frames up to %d bytes but MAX_BODY is %d: raise "
                "the worker's MAX_FRAME or lower MAX_BODY, or large jobs will "
                "not get through",
                link.name,
                max_frame,
                self.settings.max_body,
            )
        self._joined(link)

    def _joined(self, link: Link) -> None:
        """`link` is in the rotation: count it for the barrier, send what waits."""
        link.last_seen = self._clock()
        if not link.ever_ready:
            link.ever_ready = True
            if all(each.ever_ready for each in self.links):
                log.info("barrier met: all %d workers ready", len(self.links))
                self._barrier.set()
        self._wake.set()

    def _bye(self, link: Link, frames: list[bytes]) -> None:
        reason = protocol.decode_bye(frames)
        link.send([protocol.DONE])  # nothing more from us on this connection
        if link.leave():
            log.info(
                "worker %s is leaving; %d jobs in flight", link.name, len(link.jobs)
            )
        else:
            self._throttle.warning(
                f"refused:{link.name}",
                "worker %s refused this web: %s",
                link.name,
                reason or "no reason given",
            )

    def _on_event(self, link: Link, event: int) -> None:
        try:
            self._event(link, event)
        except Exception:  # a bug must not kill the link's monitor reader
            self._throttle.exception(f"bug:{link.name}", "dispatcher: unexpected error")

    def _event(self, link: Link, event: int) -> None:
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            link.handshake_error = ""
            if link.handshake():
                self._joined(link)
            elif link.needs_hello():
                self._hello(link)
        elif event & HANDSHAKE_FAILED:
            self._handshake_failed(link, event)
        elif event == zmq.EVENT_DISCONNECTED:
            if link.disconnected():
                self._lose(link, "connection closed", graceful=link.state == LEAVING)

    def _handshake_failed(self, link: Link, event: int) -> None:
        """Say why a worker is not there when CURVE refused the connection."""
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            why = ("the worker refused this web's key: add this web's NAME.key to "
                   "the worker's CURVE_ALLOW directory")  # fmt: skip
        else:
            why = ("the CURVE handshake failed: is CURVE_SERVER the worker's public "
                   "key, and is the worker running with CURVE on?")  # fmt: skip
        link.handshake_error = why
        self._throttle.warning(f"handshake:{link.name}", "worker %s: %s",
                               link.name, why)  # fmt: skip

    def _lose(self, link: Link, reason: str, graceful: bool = False) -> None:
        """Take back every job `link` holds, re-queue or dead-letter it, reconnect."""
        jobs = link.take_back(graceful)
        requeued = 0
        for job in jobs:
            if job.attempt >= self.settings.max_attempts:
                note = f"worker lost ({reason}) on attempt {job.attempt} of " + str(
                    self.settings.max_attempts
                )
                self.dead_letters.write(job, note, link.name)
                self._finish(job, Status.DEAD, link.name, note.encode())
            else:
                self._retry.append(job)
                requeued += 1
        link.resent += requeued
        self.resent += requeued
        if graceful and not jobs:
            log.info("worker %s left", link.name)
        elif link.reliable:
            log.warning(
                "worker %s %s (%s): %d jobs re-sent, %d dead-lettered",
                link.name,
                "left" if graceful else "lost",
                reason,
                requeued,
                len(jobs) - requeued,
            )
        self._wake.set()
        if link in self._removing:
            self._retire_if_done(link)  # its jobs went elsewhere: gone for good
        if self._draining:
            self._check_settled()

    def _finish(
        self, job: Envelope, status: Status, worker: str, payload: bytes = b""
    ) -> None:
        """`job` is done with: keep its record for status lookups, wake a waiter."""
        self.records.add(job.id, status, worker, job.attempt, payload)
        if self.journal is not None:  # no longer owed
            self.journal.acked((job,))
        job.resolve(worker, status, payload)

    def _malformed(self, link: Link, what: str) -> None:
        self.malformed += 1
        self._throttle.warning(
            f"malformed:{link.name}",
            "dropped a malformed message from worker %s: %s (%d so far)",
            link.name,
            what,
            self.malformed,
        )

    def _check_settled(self) -> None:
        if not self.outstanding():
            self._settled.set()

    # -- reporting -----------------------------------------------------------------

    def status(self, job_id: str) -> dict | None:
        """What became of a job this process accepted; None if unknown or expired.

        Jobs not finished are looked for where they are (a link's in-flight
        table, the queues): a lookup is rare, a map kept per job is not free.
        """
        key = job_id.encode("ascii", "replace")
        for link in self.links:
            job = link.jobs.get(key)
            if job is not None:
                return {"id": job_id, "status": "in_flight", "worker": link.name,
                        "attempt": job.attempt}  # fmt: skip
        for queue in (self._retry, self._fresh):
            for job in queue:
                if job.id == job_id:
                    return {"id": job_id, "status": "queued", "attempt": job.attempt}
        return self.records.get(job_id)

    def owns(self, job_id: str) -> bool:
        """True if `job_id` was made by this process (whatever became of it)."""
        return job_id.startswith(self._prefix)

    @property
    def barrier_met(self) -> bool:
        return self._barrier.is_set()

    def wait_barrier(self, timeout: float) -> bool:
        """Block up to `timeout` s until every configured worker said READY once."""
        return self._barrier.wait(timeout)

    def now(self) -> float:
        """The dispatcher's clock (monotonic seconds)."""
        return self._clock()

    def pending(self) -> int:
        """Jobs accepted and waiting for a worker."""
        return len(self._fresh) + len(self._retry)

    def pushed(self) -> int:
        """Jobs handed to plain PULL workers: at most once, never acknowledged."""
        return sum(link.sent for link in self.links if not link.reliable)

    def outstanding(self) -> int:
        """Jobs accepted and not yet acknowledged (waiting or in flight)."""
        return (
            len(self._fresh)
            + len(self._retry)
            + sum(len(link.jobs) for link in self.links)
        )

    def _states(self) -> str:
        return ", ".join(f"{link.name} {link.status}" for link in self.links)

    def _barrier_message(self) -> str:
        waiting = [link.name for link in self.links if not link.ever_ready]
        ready = len(self.links) - len(waiting)
        return (
            f"{ready} of {len(self.links)} workers READY after "
            f"{self.settings.ready_timeout:g} s (waiting on {', '.join(waiting)}); "
            "is server.py running there?"
        )

    def health(self) -> tuple[bool, dict]:
        ready = [link.name for link in self.links if link.state == READY]
        journal_ok = self.journal is None or self.journal.healthy
        ok = self._barrier.is_set() and bool(ready) and not self._draining
        ok = ok and journal_ok
        return ok, {
            "status": "ok" if ok else "unavailable",
            "barrier": self._barrier.is_set(),
            "journal": "off"
            if self.journal is None
            else ("ok" if journal_ok else self.journal.last_error),  # fmt: skip
            "ready": ready,
            "not_ready": {
                link.name: link.handshake_error or link.status
                for link in self.links
                if link.state != READY
            },
        }

    def _journal_report(self) -> dict:
        journal = self.journal
        if journal is None:
            return {"mode": "off"}
        return {"mode": journal.sync, "path": journal.path, "slot": journal.slot,
                "healthy": journal.healthy, "last_error": journal.last_error,
                "jobs_written": journal.written, "groups": journal.groups,
                "bytes_written": journal.bytes_written,
                "failures": journal.failures, "replayed": self.replayed,
                "bytes_on_disk": journal.size()}  # fmt: skip

    def stats(self) -> dict:
        return {
            "pid": os.getpid(),
            "accepted": self.accepted,
            "pending": self.pending(),
            "in_flight": sum(len(link.jobs) for link in self.links),
            "acked": self.acked,
            "failed": self.failed,
            "resent": self.resent,
            "dead_lettered": self.dead_letters.count,
            "redriven": self.redriven,
            "workers_added": self.added,
            "workers_removed": self.removed,
            "pushed": self.pushed(),
            "rejected": self.rejected,
            "stray_acks": self.stray_acks,
            "malformed": self.malformed,
            "barrier": self._barrier.is_set(),
            "journal": self._journal_report(),
            "workers": [link.report() for link in self.links],
        }
