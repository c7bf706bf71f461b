"""The web side of the bridge: barrier, round-robin, jobs in flight, re-sends.

Request greenlets call `Dispatcher.submit`, which only queues the job (bounded)
and wakes the dispatcher greenlet; that greenlet sends queued jobs in one batch
per worker, and every heartbeat it pings, checks liveness and ack deadlines.
The links' reader greenlets hand in acknowledgements and control messages.
Nothing here waits on a socket, so nothing on the request path does either.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import time
from collections import deque
from collections.abc import Iterator
from typing import NamedTuple

import gevent
import gevent.event
import zmq.green as zmq

from greenpipe import protocol
from greenpipe.config import WebSettings
from greenpipe.deadletter import DeadLetters
from greenpipe.errors import LinkError, ProtocolError, Unavailable
from greenpipe.link import CONNECTING, LEAVING, LOST, READY, Link, PushLink
from greenpipe.throttle import Throttle

log = logging.getLogger(__name__)
monotonic = time.monotonic


class Outcome(NamedTuple):
    """What became of a job someone waits for (Prefer: wait)."""

    worker: str
    status: str  # "ok", "failed" (handler raised), "dead" (given up), "unacknowledged"
    payload: bytes  # the handler's JSON result, or an error text


class Job:
    """A job as the web holds it: the request's parts, and where it has been."""

    __slots__ = ("key", "id", "attempt", "method", "path", "query", "content_type")
    __slots__ += ("body", "flags", "sent_at", "reply")

    def __init__(
        self,
        job_id: str,
        method: bytes,
        path: bytes,
        query: bytes,
        content_type: bytes,
        body: bytes,
        reply: gevent.event.AsyncResult | None = None,
    ) -> None:
        self.id = job_id
        self.key = job_id.encode("ascii")
        self.attempt = 0  # deliveries so far
        self.method = method
        self.path = path
        self.query = query
        self.content_type = content_type
        self.body = body
        self.flags = protocol.WANTS_REPLY if reply is not None else 0
        self.sent_at = 0.0
        self.reply = reply


class Dispatcher:
    """Feeds the configured workers; see DESIGN.md for the invariants it keeps."""

    def __init__(
        self,
        settings: WebSettings,
        context: zmq.Context | None = None,
        name: str = "",
    ) -> None:
        self.settings = settings
        self.name = name or f"web pid {os.getpid()}"
        self._context = context or zmq.Context.instance()
        self.links: list[Link] = [
            (Link if endpoint.reliable else PushLink)(
                index, endpoint, self._context, self._on_message, self._on_event
            )
            for index, endpoint in enumerate(settings.workers)
        ]
        self._fresh: deque[Job] = deque()  # accepted, never sent
        self._retry: deque[Job] = deque()  # taken back from a lost worker
        self._cursor = 0  # the next link in round-robin order
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
        self._throttle = Throttle(log)
        self.accepted = self.acked = self.failed = self.resent = self.rejected = 0
        self.stray_acks = self.malformed = 0
        self.pushed = 0  # handed to plain PULL workers: at most once, never acked

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
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
        for link in self.links:
            if link.reliable and link.state in (READY, LEAVING):
                try:
                    link.send([protocol.DONE])
                except LinkError:
                    pass
            link.close()
        if self._greenlet is not None:
            self._greenlet.kill(block=False)

    # -- the request path -----------------------------------------------------------

    def submit(
        self,
        method: bytes,
        path: bytes,
        query: bytes,
        content_type: bytes,
        body: bytes,
        reply: bool = False,
    ) -> Job:
        """Accept one job, or raise `Unavailable` (a 503) without waiting long.

        Before the barrier is met, waits for it up to READY_TIMEOUT; after that,
        never waits: the job is queued and the dispatcher greenlet sends it.
        Jobs beyond what the ready workers have credit for are "waiting", and
        at most MAX_PENDING of them are accepted.
        """
        if not self._barrier.is_set() and not self._barrier.wait(
            self.settings.ready_timeout
        ):
            self.rejected += 1
            raise Unavailable(self._barrier_message(), retry_after=2)
        if self._draining:
            self.rejected += 1
            raise Unavailable("this web process is stopping; retry on another", 1)
        for link in self.links:
            if link.state is READY:
                break
        else:
            self.rejected += 1
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
                self.rejected += 1
                raise Unavailable(
                    f"{waiting} jobs already wait for a worker (MAX_PENDING="
                    f"{self.settings.max_pending}); retry soon, or add workers"
                )
        job = Job(
            self._prefix + format(next(self._seq), "x"),
            method,
            path,
            query,
            content_type,
            body,
            gevent.event.AsyncResult() if reply else None,
        )
        self._fresh.append(job)
        self.accepted += 1
        self._wake.set()
        return job

    @staticmethod
    def outcome(job: Job, timeout: float) -> Outcome | None:
        """Wait up to `timeout` s for what became of a job submitted with reply."""
        assert job.reply is not None, "submit(..., reply=True) first"
        return job.reply.wait(timeout)

    # -- the dispatcher greenlet ----------------------------------------------------

    def _run(self) -> None:
        interval = self.settings.heartbeat
        next_tick = monotonic()
        while not self._closed:
            self._wake.wait(max(0.0, next_tick - monotonic()))
            self._wake.clear()
            try:
                self._flush()
                if monotonic() >= next_tick:
                    next_tick = monotonic() + interval
                    self._tick()
            except Exception:  # a bug must not stop the dispatching for good
                self._throttle.exception("dispatcher", "dispatcher: unexpected error")

    def _choose(self, suspect: bool) -> Link | None:
        """The next link in round-robin order that can take a job now.

        A re-sent job (a suspect: it may be what killed its last worker) only goes
        to a worker holding no other suspect, so one poison job cannot drag the
        jobs it was sent with to the dead-letter file along with it.
        """
        links, count, start = self.links, len(self.links), self._cursor
        for step in range(count):
            link = links[(start + step) % count]
            if link.can_take() and not (suspect and link.suspects):
                self._cursor = (start + step + 1) % count
                return link
        return None

    def _flush(self) -> None:
        batches: dict[Link, list[Job]] = {}
        for queue, suspect in ((self._retry, True), (self._fresh, False)):
            while queue:
                link = self._choose(suspect)
                if link is None:
                    break
                job = queue.popleft()
                job.attempt += 1
                if link.reliable:
                    link.jobs[job.key] = job
                    if job.attempt > 1:
                        link.suspects += 1
                batches.setdefault(link, []).append(job)
        for link, jobs in batches.items():
            self._send(link, jobs)

    def _send(self, link: Link, jobs: list[Job]) -> None:
        now = monotonic()
        timeout_ms = self._job_timeout_ms
        sent = 0
        try:
            if link.reliable:
                records = []
                for job in jobs:
                    job.sent_at = now
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
                        )
                    )
                sent = self._send_records(link, records)
            else:
                for job in jobs:
                    if not link.send([job.key, job.body]):
                        break
                    sent += 1
        except LinkError as exc:
            self._throttle.warning(f"send:{link.name}", "%s", exc)
        link.sent += sent
        if not link.reliable:
            self.pushed += sent
            for job in jobs[:sent]:
                if job.reply is not None:  # nothing will ever come back from a PULL
                    job.reply.set(Outcome(link.name, "unacknowledged", b""))
        if sent == len(jobs):
            return
        # Not handed to libzmq: take them back in order, and reconnect the link.
        for job in reversed(jobs[sent:]):
            link.jobs.pop(job.key, None)
            job.attempt -= 1
            (self._retry if job.attempt else self._fresh).appendleft(job)
        if link.reliable:
            link.suspects = sum(1 for job in link.jobs.values() if job.attempt > 1)
            self._lose(link, "cannot send: connection not complete")
        else:
            link.state = LOST
        self._wake.set()

    @staticmethod
    def _send_records(link: Link, records: list[bytes]) -> int:
        """Send job records in as few JOBS frames as the worker's MAX_FRAME allows.

        Returns how many records libzmq took (the rest stay with the caller).
        """
        limit = link.max_frame
        if sum(map(len, records)) <= limit:
            return len(records) if link.send([protocol.JOBS, b"".join(records)]) else 0
        sent = start = size = 0
        for end, record in enumerate(records):
            if size + len(record) > limit and end > start:
                if not link.send([protocol.JOBS, b"".join(records[start:end])]):
                    return sent
                sent, start, size = end, end, 0
            size += len(record)
        if link.send([protocol.JOBS, b"".join(records[start:])]):
            sent = len(records)
        return sent

    def _tick(self) -> None:
        now = monotonic()
        timeout = self.settings.heartbeat_timeout
        for link in self.links:
            if not link.reliable:
                continue
            if link.state in (CONNECTING, LOST):
                if link.connected:  # in case a HELLO went to a worker that died since
                    self._hello(link)
                continue
            link.send([protocol.PING])
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
        link.last_seen = monotonic()
        if kind == protocol.ACKS:
            self._acks(link, frames)
        elif kind == protocol.HEARTBEAT:
            pass
        elif kind == protocol.READY:
            self._ready(link, frames)
        elif kind == protocol.BYE:
            self._bye(link, frames)
        else:
            self._malformed(link, f"unknown message kind {kind[:8]!r}")

    def _acks(self, link: Link, frames: list[bytes]) -> None:
        if len(frames) < 2:
            self._malformed(link, "ACKS without its frame of ids")
            return
        jobs = link.jobs
        done = 0
        for key, status, payload in self._outcomes(link, frames):
            job = jobs.pop(key, None)
            if job is None:
                self.stray_acks += 1
                continue
            done += 1
            if job.attempt > 1:
                link.suspects -= 1
            if status != protocol.OK:
                link.failed += 1
                self.failed += 1
            if job.reply is not None:
                ok = status == protocol.OK
                job.reply.set(Outcome(link.name, "ok" if ok else "failed", payload))
        link.acked += done
        self.acked += done
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

    def _ready(self, link: Link, frames: list[bytes]) -> None:
        try:
            version, credit, max_frame, worker_name = protocol.decode_ready(frames)
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
        link.credit, link.max_frame, link.worker_name = credit, max_frame, worker_name
        if link.state not in (CONNECTING, LOST):
            return  # an answer to a repeated HELLO
        back = link.state == LOST or link.ever_ready
        link.state = READY
        log.info(
            "worker %s %s: credit %d (%s)",
            link.name,
            "back" if back else "ready",
            credit,
            worker_name,
        )
        if max_frame < self.settings.max_body + protocol.JOB_OVERHEAD:
            log.warning(
                "worker %s accepts frames up to %d bytes but MAX_BODY is %d: raise "
                "the worker's MAX_FRAME or lower MAX_BODY, or large jobs will "
                "not get through",
                link.name,
                max_frame,
                self.settings.max_body,
            )
        self._mark_ready(link)

    def _mark_ready(self, link: Link) -> None:
        link.last_seen = monotonic()
        if not link.ever_ready:
            link.ever_ready = True
            if all(each.ever_ready for each in self.links):
                log.info("barrier met: all %d workers ready", len(self.links))
                self._barrier.set()
        self._wake.set()

    def _bye(self, link: Link, frames: list[bytes]) -> None:
        reason = protocol.decode_bye(frames)
        link.send([protocol.DONE])  # nothing more from us on this connection
        if link.state == READY:
            link.state = LEAVING
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
        link.connected = event == zmq.EVENT_HANDSHAKE_SUCCEEDED
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            if not link.reliable:
                link.state = READY
                log.info("plain PULL worker %s connected (at most once)", link.name)
                self._mark_ready(link)
            elif link.state in (CONNECTING, LOST):
                self._hello(link)
        elif event == zmq.EVENT_DISCONNECTED:
            if not link.reliable:
                if link.state == READY:
                    link.state = LOST
                    log.warning("plain PULL worker %s disconnected", link.name)
            elif link.state in (READY, LEAVING):
                link.receive_queued()  # acks that arrived before the close still count
                if link.state in (READY, LEAVING):
                    self._lose(
                        link, "connection closed", graceful=link.state == LEAVING
                    )

    def _lose(self, link: Link, reason: str, graceful: bool = False) -> None:
        """Take back every job `link` holds, re-queue or dead-letter it, reconnect."""
        jobs = list(link.jobs.values())
        link.jobs.clear()
        link.suspects = 0
        requeued = 0
        for job in jobs:
            if job.attempt >= self.settings.max_attempts:
                note = f"worker lost ({reason}) on attempt {job.attempt} of " + str(
                    self.settings.max_attempts
                )
                self.dead_letters.write(job, note, link.name)
                if job.reply is not None:
                    job.reply.set(Outcome(link.name, "dead", note.encode()))
            else:
                self._retry.append(job)
                requeued += 1
        link.resent += requeued
        self.resent += requeued
        link.state = CONNECTING if graceful else LOST
        if graceful and not jobs:
            log.info("worker %s left", link.name)
        else:
            log.warning(
                "worker %s %s (%s): %d jobs re-sent, %d dead-lettered",
                link.name,
                "left" if graceful else "lost",
                reason,
                requeued,
                len(jobs) - requeued,
            )
        link.reset()
        self._wake.set()
        if self._draining:
            self._check_settled()

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
        ok = self._barrier.is_set() and bool(ready) and not self._draining
        return ok, {
            "status": "ok" if ok else "unavailable",
            "barrier": self._barrier.is_set(),
            "ready": ready,
            "not_ready": {
                link.name: link.status for link in self.links if link.state != READY
            },
        }

    def stats(self) -> dict:
        return {
            "pid": os.getpid(),
            "accepted": self.accepted,
            "pending": len(self._fresh) + len(self._retry),
            "in_flight": sum(len(link.jobs) for link in self.links),
            "acked": self.acked,
            "failed": self.failed,
            "resent": self.resent,
            "dead_lettered": self.dead_letters.count,
            "pushed": self.pushed,
            "rejected": self.rejected,
            "stray_acks": self.stray_acks,
            "malformed": self.malformed,
            "barrier": self._barrier.is_set(),
            "workers": [
                {
                    "endpoint": link.name,
                    "state": link.status,
                    "delivery": "at-least-once" if link.reliable else "at-most-once",
                    "sent": link.sent,
                    "acked": link.acked,
                    "failed": link.failed,
                    "in_flight": len(link.jobs),
                    "resent": link.resent,
                    "credit": link.credit,
                }
                for link in self.links
            ],
        }
