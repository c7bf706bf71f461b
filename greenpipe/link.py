"""One configured worker as the web sees it: its state, its jobs, its messages.

A `Link` owns a `Connection` (`greenpipe.connection`: a DEALER connected to a
worker's ROUTER, a monitor on it, a reader greenlet on each) whose readers keep
what they read and name the link in the shared `Inbox` (which wakes the
dispatcher greenlet). That greenlet has the link apply it (`receive`), and
reacts to the events returned (`greenpipe.linkevents`): nothing here calls up.
A link owns its state machine and the jobs it holds: a message or monitor event
(READY, BYE, a handshake, a disconnect) or the dispatcher (a loss) makes the
transition:

    CONNECTING --READY--> READY --BYE--> LEAVING --closed--> CONNECTING
                            |                                  (a graceful leave)
                            +--silent, closed, ack overdue--> LOST --READY--> READY

Sends never wait: ``NOBLOCK``, and "full" is the caller's business. A
`greenpipe.pushlink.PushLink` is the at-most-once variant for plain PULL
workers in any language.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from itertools import islice

import zmq.green as zmq

from greenpipe import protocol
from greenpipe.config import Endpoint
from greenpipe.connection import Connection
from greenpipe.curve import Keypair
from greenpipe.errors import LinkError, ProtocolError
from greenpipe.handshake import HANDSHAKE_FAILED, handshake_failure
from greenpipe.inbox import Inbox, Unread
from greenpipe.jobs import Envelope, Progress, Status
from greenpipe.linkevents import (
    CONNECTING,
    FULL,
    LEAVING,
    LOST,
    READY,
    Event,
    Happened,
    LinkState,
)
from greenpipe.throttle import Throttle

__all__ = [
    "CONNECTING", "FULL", "HANDSHAKE_FAILED", "LEAVING", "LOST", "PUSH_HWM", "READY",
    "Event", "Happened", "Inbox", "Link", "LinkState", "Unread", "handshake_failure",
]  # fmt: skip

log = logging.getLogger(__name__)
_throttle = Throttle(log)


PUSH_HWM = 1_000  # messages queued to a plain PULL worker, at most
# A result's status byte as what became of the job (RETRY: it waits, retrying).
_OUTCOMES = {
    protocol.OK: Status.DONE,
    protocol.FAILED: Status.FAILED,
    protocol.RETRY: Status.RETRYING,
    protocol.CANCELLED: Status.CANCELLED,
}


class Link:
    """A greenpipe worker behind an acknowledged DEALER connection."""

    reliable = True  # acknowledged, re-sent on loss

    def __init__(
        self,
        index: int,
        endpoint: Endpoint,
        context: zmq.Context,
        inbox: Inbox,
    ) -> None:
        self.index = index
        self.endpoint = endpoint
        self.name = str(endpoint)
        self.state = CONNECTING
        self.credit = 0  # jobs the worker allows in flight (READY, then CREDIT)
        self.credit_seq = 0  # the last CREDIT applied (echoed in PING)
        self.max_frame = 0  # largest job frame the worker accepts (from READY)
        # job name -> seconds: its handler's own time limit (from READY); the
        # web's ack backstop for such a job follows it, not JOB_TIMEOUT
        self.limits: dict[bytes, float] = {}
        # the job names it runs, from READY (greenpipe.routing); a PUSH: every name
        self.serves = protocol.EVERYTHING
        self.worker_name = ""
        self.jobs: dict[bytes, Envelope] = {}  # in flight, oldest first
        self.suspects = 0  # jobs in `jobs` taken back from a lost worker
        self.sent = self.acked = self.failed = self.resent = 0
        self.last_seen = 0.0  # monotonic time of the last message from the worker
        self.ever_ready = False
        # The worker's own figures from its last HEARTBEAT: handled, failed,
        # refused handshakes, run time sum, run time bucket counts.
        self.figures: protocol.Figures | None = None
        self.connected = False  # the ZMTP handshake completed (monitor events)
        self.handshake_error = ""  # why the last handshake failed, if it did
        self.failed_at = 0.0  # when it failed (or was last tried again)
        # (this web's keypair, the worker's public key): CURVE on this link.
        self.curve: tuple[Keypair, bytes] | None = None
        self._context = context
        self.wire = Connection(self.name, inbox, self)  # its socket and readers
        self._unread = self.wire.unread  # read, not yet applied, in order

    # -- what the worker says -----------------------------------------------------

    def receive(self, now: float) -> list[Event]:
        """Apply what the readers read, in order; what happened.

        After a loss the rest belongs to the closed connection: it is dropped,
        as the socket's unread messages are when the link reconnects.
        """
        events: list[Event] = []
        unread = self._unread
        while unread:
            item = unread.popleft()
            try:
                if isinstance(item, tuple):
                    events += self.on_monitor(item[0], now, item[1])
                else:
                    events += self.handle(item, now)
            except Exception:  # a bug must not lose what the rest of the batch says
                _throttle.exception(f"bug:{self.name}", "link %s: unexpected error",
                                    self.name)  # fmt: skip
            if events and events[-1].what is Happened.LOST:
                unread.clear()
        return events

    def handle(self, frames: list[bytes], now: float) -> list[Event]:
        """Decode and apply one message from the worker; what happened.

        `now` is the dispatcher's clock: the link was heard from then.
        """
        self.last_seen = now
        kind = frames[0]
        if kind == protocol.ACKS:
            return self._acks(frames)
        if kind == protocol.HEARTBEAT:
            if len(frames) > 1:
                try:
                    self.figures = protocol.decode_heartbeat(frames)
                    if len(frames) == 3:
                        self._progress(protocol.decode_progress(frames[2]))
                except ProtocolError as exc:
                    return [Event(Happened.MALFORMED, str(exc))]
            return []
        if kind == protocol.READY:
            return self._ready(frames)
        if kind == protocol.CREDIT:
            try:
                change, seq = protocol.decode_credit(frames)
            except ProtocolError as exc:
                return [Event(Happened.MALFORMED, str(exc))]
            self.credit = max(0, self.credit + change)
            self.credit_seq = seq  # the next PING tells the worker it was applied
            return [Event(Happened.CREDIT, change)]
        if kind == protocol.BYE:
            reason = protocol.decode_bye(frames)
            self.send([protocol.DONE])  # nothing more from us on this connection
            if self.leave():
                return [Event(Happened.LEAVING, len(self.jobs))]
            return [Event(Happened.REFUSED, reason or "no reason given")]
        return [Event(Happened.MALFORMED, f"unknown message kind {kind[:8]!r}")]

    def _progress(self, reports: list[tuple[bytes, float, float | None, str]]) -> None:
        """Keep each report on its job, if this worker holds it: a report for a
        job taken back or settled meanwhile is old news, and one for a job it
        was never sent is not its to give."""
        at, jobs = time.time(), self.jobs
        for key, done, total, note in reports:
            job = jobs.get(key)
            if job is not None:
                job.progress = Progress(done, total, note, at)

    def _acks(self, frames: list[bytes]) -> list[Event]:
        """Settle the jobs an ACKS message reports done: one event for all of them.

        Per job on the hot path: plain acknowledgements cost a dict pop each;
        only results (failures, awaited values) are decoded one by one.
        """
        if len(frames) < 2:
            return [Event(Happened.MALFORMED, "ACKS without its frame of ids")]
        jobs, pop = self.jobs, self.jobs.pop
        events: list[Event] = []
        done: list[Envelope] = []
        results: list[tuple[Envelope, Status, bytes]] = []
        stray = 0
        for key in frames[1].split():
            job = pop(key, None)
            if job is None:
                stray += 1
            else:
                done.append(job)
        for frame in islice(frames, 2, None):
            try:
                key, status, payload = protocol.decode_result(frame)
            except ProtocolError as exc:
                events.append(Event(Happened.MALFORMED, str(exc)))
                continue
            job = pop(key, None)
            if job is None:
                stray += 1
            else:
                outcome = _OUTCOMES[status]
                self.failed += outcome is Status.FAILED
                results.append((job, outcome, payload))
        if self.suspects:
            self.suspects = sum(1 for job in jobs.values() if job.suspect)
        self.acked += len(done) + len(results)
        events.append(Event(Happened.ACKED, (done, results, stray)))
        return events

    def _ready(self, frames: list[bytes]) -> list[Event]:
        try:
            version, credit, max_frame, worker_name, seq = protocol.decode_ready(frames)
            if version == protocol.VERSION:
                self.limits = protocol.decode_limits(frames)
                self.serves = protocol.decode_serves(frames)
        except ProtocolError as exc:
            return [Event(Happened.MALFORMED, str(exc))]
        if version != protocol.VERSION:
            return [Event(Happened.MISMATCH, version)]
        joined = self.ready(credit, max_frame, worker_name)
        self.credit_seq = seq
        if joined is None:
            return []  # an answer to a repeated HELLO
        return [Event(Happened.JOINED, joined)]

    def on_monitor(self, event: int, now: float, value: int = 0) -> list[Event]:
        """Apply one monitor event of the link's socket (`value`: the event's)."""
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self.handshake_error = ""
            if self.handshake():
                return [Event(Happened.JOINED, "")]
            if self.needs_hello():
                return [Event(Happened.HELLO_DUE)]
        elif event & HANDSHAKE_FAILED:
            why = handshake_failure(event, value, self.curve is not None)
            self.handshake_error, self.failed_at = why, now
            return [Event(Happened.HANDSHAKE_FAILED, why)]
        elif event == zmq.EVENT_DISCONNECTED:
            return self.disconnected(now)
        return []

    def goodbye(self) -> None:
        """Say DONE if the worker listens (it forgets this web), then close."""
        if self.state in (READY, LEAVING):
            try:
                self.send([protocol.DONE])
            except LinkError:
                pass
        self.close()

    # -- state ------------------------------------------------------------------

    @property
    def reported_state(self) -> LinkState:
        """`state` as /stats, /healthz and /metrics show it: READY with all its
        credit in use is FULL. `state` alone drives the transitions."""
        if self.state == READY and len(self.jobs) >= self.credit:
            return FULL
        return self.state

    def can_take(self) -> bool:
        return self.state == READY and len(self.jobs) < self.credit

    def assign(self, job: Envelope) -> None:
        """`job` goes out on this link: held until acknowledged or taken back."""
        self.jobs[job.key] = job
        if job.suspect:
            self.suspects += 1

    def give_back(self, jobs: Sequence[Envelope]) -> None:
        """`jobs` never reached libzmq: they are no longer held here."""
        for job in jobs:
            self.jobs.pop(job.key, None)
        self.suspects = sum(1 for job in self.jobs.values() if job.suspect)

    def ready(self, credit: int, max_frame: int, worker_name: str) -> str | None:
        """READY from the worker: "ready" or "back" if it (re)joins the rotation.

        None when it was in the rotation already (an answer to a repeated HELLO).
        """
        self.credit, self.max_frame, self.worker_name = credit, max_frame, worker_name
        if self.state not in (CONNECTING, LOST):
            return None
        back = self.state == LOST or self.ever_ready
        self.state = READY
        return "back" if back else "ready"

    def leave(self) -> bool:
        """BYE from the worker: no new jobs. False if it was not in the rotation."""
        if self.state != READY:
            return False
        self.state = LEAVING
        return True

    def needs_hello(self) -> bool:
        """True while the worker has not (or no longer) said READY on this link."""
        return self.state in (CONNECTING, LOST)

    def handshake(self) -> bool:
        """The ZMTP handshake completed. True if that alone puts it in rotation."""
        self.connected = True
        return False  # a greenpipe worker joins with READY, after HELLO

    def retry_handshake(self, now: float, after: float) -> bool:
        """Connect afresh if the last handshake failed `after` s ago or more.

        libzmq does not reconnect after a refused handshake (a CURVE key not
        in the worker's CURVE_ALLOW yet, a wrong key, CURVE on one side only):
        without this a web would wait for a restart after the key was added.
        True if it reconnected.
        """
        if not self.handshake_error or self.connected or now - self.failed_at < after:
            return False
        self.failed_at = now
        self.reset()
        return True

    def disconnected(self, now: float) -> list[Event]:
        """The connection closed: LOST if the jobs it holds must be taken back.

        Applies what was read and what the socket already holds first:
        acknowledgements that beat the close still count.
        """
        self.connected = False
        if self.state not in (READY, LEAVING):
            return []
        events = self.receive_queued(now)
        if self.state in (READY, LEAVING):
            graceful = self.state == LEAVING
            events.append(Event(Happened.LOST, ("connection closed", graceful)))
        return events

    def take_back(self, graceful: bool) -> list[Envelope]:
        """Out of the rotation: return every job held, oldest first, and reconnect.

        A graceful leave (BYE, then closed) waits for READY as a new worker
        would; a loss is LOST until the worker answers again.
        """
        jobs = list(self.jobs.values())
        self.jobs.clear()
        for job in jobs:
            job.progress = None  # that run's report: its next run reports afresh
        self.suspects = 0
        self.state = CONNECTING if graceful else LOST
        self.reset()
        return jobs

    def deliver(self, jobs: Sequence[Envelope], now: float, timeout_ms: int) -> int:
        """Send `jobs` (already assigned) in as few frames as the worker allows.

        Returns how many libzmq took; the rest are the caller's to take back.
        Raises LinkError if the socket fails for a reason other than "full".
        """
        records = []
        for job in jobs:
            job.sent_at = now
            job.progress = None  # a new run reports afresh
            records.append(
                protocol.encode_job(
                    job.key,
                    job.attempt,
                    job.method,
                    job.path,
                    job.query,
                    job.content_type,
                    job.body,
                    job.flags,
                    timeout_ms,
                    job.name,
                    job.retries,
                )
            )
        sent = self._send_records(records)
        self.sent += sent
        return sent

    def _send_records(self, records: list[bytes]) -> int:
        """Job records in as few JOBS frames as the worker's MAX_FRAME allows."""
        limit = self.max_frame
        if sum(map(len, records)) <= limit:
            return len(records) if self.send([protocol.JOBS, b"".join(records)]) else 0
        sent = start = size = 0
        for end, record in enumerate(records):
            if size + len(record) > limit and end > start:
                if not self.send([protocol.JOBS, b"".join(records[start:end])]):
                    return sent
                sent, start, size = end, end, 0
            size += len(record)
        if self.send([protocol.JOBS, b"".join(records[start:])]):
            sent = len(records)
        return sent

    def report(self) -> dict:
        """This link's line in /stats."""
        return {
            "endpoint": self.name,
            "state": self.reported_state.value,
            "delivery": "at-least-once" if self.reliable else "at-most-once",
            "sent": self.sent,
            "acked": self.acked,
            "failed": self.failed,
            "in_flight": len(self.jobs),
            "resent": self.resent,
            "credit": self.credit,
            # handshakes the worker's CURVE allowlist refused (all webs; its count)
            "refused": self.figures.refused if self.figures is not None else 0,
            # its handlers running past their time limit now (all webs)
            "overrunning": self.figures.overrunning if self.figures else 0,
            "handshake_error": self.handshake_error,
        }

    # -- sockets ------------------------------------------------------------------

    def _socket(self) -> zmq.Socket:
        sock = self._context.socket(zmq.DEALER)
        # IMMEDIATE stays 0 here: with 1, libzmq terminates the pipe when the
        # connection drops and discards acknowledgements not yet read, so a worker
        # that acks and then leaves would have its last jobs re-sent. Queueing to
        # an incomplete connection is harmless: one peer per socket, and the
        # dispatcher only sends jobs to a link in state READY.
        sock.setsockopt(zmq.IMMEDIATE, 0)
        # Credit bounds the jobs in flight; the HWMs only bound batches.
        sock.setsockopt(zmq.SNDHWM, 10_000)
        sock.setsockopt(zmq.RCVHWM, 10_000)
        # A frozen worker's kernel still accepts TCP: give up on the greeting.
        sock.setsockopt(zmq.HANDSHAKE_IVL, 3_000)
        # Results come back in acks; a larger frame drops the connection.
        sock.setsockopt(zmq.MAXMSGSIZE, 64 << 20)
        return sock

    def open(self) -> None:
        """Create the socket and its monitor, connect, and start the readers."""
        self.wire.open(self._socket(), self.endpoint.address, self.curve,
                       self.reliable)  # fmt: skip
        self.connected = False

    def close(self) -> None:
        """Close both sockets now (unsent messages are dropped); readers exit."""
        self.wire.close()

    def reset(self) -> None:
        """Drop the connection and start afresh (a new routing id at the worker)."""
        self.close()
        self.open()

    def send(self, frames: Sequence[bytes]) -> bool:
        """Queue one message without waiting. False if it cannot go now.

        "Cannot go" means the high-water mark is reached (or, for a PushLink,
        no connection is complete); the caller keeps the message's jobs.
        Raises LinkError if the socket fails for a reason other than "full".
        """
        return self.wire.send(frames)

    def receive_queued(self, now: float) -> list[Event]:
        """Apply every message read or waiting in the socket, without waiting.

        Monitor events read meanwhile stay for `receive`.
        """
        events: list[Event] = []
        unread = self._unread
        if unread:
            messages = [item for item in unread if not isinstance(item, tuple)]
            monitor = [item for item in unread if isinstance(item, tuple)]
            unread.clear()
            unread.extend(monitor)
            for frames in messages:
                events += self.handle(frames, now)
        for frames in self.wire.queued():
            events += self.handle(frames, now)
        return events

    def __repr__(self) -> str:
        shown, held = self.reported_state, len(self.jobs)
        return f"<Link {self.index} {self.name} {shown} {held} in flight>"
