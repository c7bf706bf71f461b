"""The worker process: its receive and send loops, the messages, signals, drain.

`Worker` owns the rooms below it (`Router`, `Peers`, `Pool`), reads each
message and hands it to the room it concerns, sends what they return, and
stops in order. `run` is server.py's body.
"""

from __future__ import annotations

import logging
import os
import signal
import struct
import time
from collections.abc import Callable

import gevent
import gevent.event
import zmq.green as zmq

from greenpipe import protocol
from greenpipe.config import WorkerSettings
from greenpipe.credit import Shares
from greenpipe.errors import ProtocolError
from greenpipe.jobs import Handler
from greenpipe.throttle import Throttle
from greenpipe.worker.loading import in_app_context, load_handler
from greenpipe.worker.peers import Peer, Peers, announced
from greenpipe.worker.pool import Pool
from greenpipe.worker.router import Router

log = logging.getLogger("greenpipe.worker")  # one logger for the package's lines
monotonic = time.monotonic

# What reads a message of one kind: (routing id, its web if known, the frames).
OnMessage = Callable[[bytes, Peer | None, list[bytes]], None]


class Worker:
    """Runs a handler for every job the connected webs send; see the package doc."""

    def __init__(
        self,
        settings: WorkerSettings,
        handler: Handler,
        context: zmq.Context | None = None,
    ) -> None:
        self.settings = settings
        self.handler = handler
        self.name = f"worker :{settings.port}"
        self.router = Router(settings, context or zmq.Context.instance())
        # The handlers' own time limits, announced in READY (the web's backstop).
        limits: dict[str, float] = getattr(handler, "time_limits", {})
        # ... and the job names they run: the web routes only those here.
        self.peers = Peers(settings.concurrency, settings.max_frame, limits,
                           announced(handler, settings.queues))  # fmt: skip
        self._wake = gevent.event.Event()  # acks to send
        self.pool = Pool(handler, settings, self.peers.shares, self._wake)
        self._peers_done = gevent.event.Event()  # every web said DONE
        self._stopping = gevent.event.Event()
        self._draining = False
        self._throttle = Throttle(log)
        self.malformed = 0
        # By kind: who reads it, and how many frames it must have (None: it checks).
        self._kinds: dict[bytes, tuple[OnMessage, int | None]] = {
            protocol.JOBS: (self._on_jobs, None),
            protocol.PING: (self._on_ping, None),
            protocol.HELLO: (self._on_hello, None),
            protocol.CANCEL: (self._on_cancel, 3),
            protocol.DONE: (self._on_done, 2),
        }

    # -- figures (the pool counts the runs, the router refused handshakes) -------

    @property
    def endpoint(self) -> str:
        return self.router.endpoint

    @property
    def shares(self) -> Shares:
        """The credit shared by the webs (greenpipe.credit)."""
        return self.peers.shares

    @property
    def refused(self) -> int:
        """Handshakes the allowlist refused (0 without CURVE)."""
        return self.router.refused

    @property
    def handled(self) -> int:
        """Jobs run to an end, OK or not."""
        return self.pool.handled

    # -- lifecycle ------------------------------------------------------------------

    def bind(self) -> str:
        """Bind the ROUTER; returns the resolved endpoint (the real port for port 0)."""
        endpoint = self.router.bind()
        self.name = f"worker :{endpoint.rsplit(':', 1)[1]}"
        self.router.announce(self.name)
        return endpoint

    def serve(self) -> None:
        """Serve until `stop`, then drain: BYE, finish and acknowledge, close."""
        if not self.router.bound:
            self.bind()
        greenlets = [gevent.spawn(self._receive), gevent.spawn(self._send_loop)]
        queues = self.settings.queues
        log.info(
            "%s: listening on %s (pid %d, concurrency %d, handler %s%s)",
            self.name,
            self.endpoint,
            os.getpid(),
            self.settings.concurrency,
            self.settings.handler,
            "" if queues == "default" else f", queues {queues}",
        )
        serves = self.peers.serves
        if not serves.names and not serves.default:  # READY will say: nothing
            log.warning(
                "%s: handler %s has no job names and no default handler: no web "
                "will send it a job; add @handlers.job(name) or @handlers.default",
                self.name,
                self.settings.handler,
            )
        self._stopping.wait()
        self._drain()
        gevent.killall(greenlets, block=False)
        self.router.close_allowlist()
        pool = self.pool
        log.info(
            "%s: stopped; handled %d jobs (%d failed, %d to be retried, %d "
            "cancelled) of %d received, dropped %d malformed messages; held at "
            "most %d jobs at once (CONCURRENCY %d, shared by the webs)",
            self.name,
            pool.handled,
            pool.ended.get(protocol.FAILED, 0),
            pool.ended.get(protocol.RETRY, 0),
            pool.ended.get(protocol.CANCELLED, 0),
            pool.received,
            self.malformed,
            self.shares.most_held,
            self.settings.concurrency,
        )

    def stop(self) -> bool:
        """Ask `serve` to drain and return; True if it had been asked already."""
        already = self._stopping.is_set()
        self._stopping.set()
        return already

    def _drain(self) -> None:
        deadline = monotonic() + self.settings.drain_timeout
        self._draining = True
        webs = len(self.peers)
        log.info("%s: stopping; saying BYE to %d %s", self.name, webs,
                 "web" if webs == 1 else "webs")  # fmt: skip
        for ident in list(self.peers.by_ident):
            self._send(ident, protocol.encode_bye("worker is stopping"))
        # DONE from a web means everything it sent is here: only then can the
        # pool's emptiness mean "nothing left".
        self._check_done()
        self._peers_done.wait(max(0.0, deadline - monotonic()))
        if not self.pool.idle.wait(max(0.0, deadline - monotonic())):
            log.warning(
                "%s: %d jobs still running after DRAIN_TIMEOUT %g s; "
                "the web re-sends them",
                self.name,
                self.pool.busy,
                self.settings.drain_timeout,
            )
        self._flush()
        # Linger long enough for the last acknowledgements to leave.
        self.router.close(min(1.0, max(0.2, deadline - monotonic())))

    # -- receiving --------------------------------------------------------------------

    def _receive(self) -> None:
        count = 0
        while (frames := self.router.receive()) is not None:
            try:
                self._on_message(frames)
            except Exception:  # a bug must not stop this worker receiving
                self._throttle.exception("receive", "%s: unexpected error", self.name)
            count += 1
            if count % 64 == 0:
                gevent.sleep(0)

    def _on_message(self, frames: list[bytes]) -> None:
        if len(frames) < 2:
            self._drop(frames[0] if frames else b"", "a message without a kind frame")
            return
        ident, kind = frames[0], frames[1]
        on, count = self._kinds.get(kind, (None, None))
        if on is None or (count is not None and len(frames) != count):
            self._drop(
                ident,
                f"unexpected message kind {kind[:8]!r} ({len(frames) - 1} frames)",
            )
            return
        on(ident, self.peers.get(ident), frames)

    def _on_jobs(self, ident: bytes, peer: Peer | None, frames: list[bytes]) -> None:
        if peer is None:
            self._drop(ident, "jobs from a connection that never said HELLO")
            return
        peer.last_seen = monotonic()
        if len(frames) != 3:
            self._drop(ident, f"JOBS with {len(frames) - 2} frames, not 1")
            return
        try:
            for job in protocol.decode_jobs(frames[2]):
                job.worker = self.name
                self.pool.start(peer, job)  # waits while CONCURRENCY handlers run
        except ProtocolError as exc:
            self._drop(ident, str(exc))

    def _on_ping(self, ident: bytes, peer: Peer | None, frames: list[bytes]) -> None:
        if peer is None:  # from a web this worker forgot; it will HELLO
            return
        try:
            if self.peers.ping(peer, frames[1:]):
                self._share(tick=False)  # a confirmed cut: grant it onwards
        except ProtocolError as exc:
            self._drop(ident, str(exc))

    def _on_hello(self, ident: bytes, peer: Peer | None, frames: list[bytes]) -> None:
        try:
            answer = self.peers.hello(ident, frames[1:], self.name, self._draining)
        except ProtocolError as exc:
            self._drop(ident, str(exc))
            return
        if answer is None:
            self._share(tick=False)  # READY once its share is free
        else:
            self._send(ident, answer)

    def _on_cancel(self, ident: bytes, peer: Peer | None, frames: list[bytes]) -> None:
        if peer is not None:
            self.pool.cancel(frames[2])

    def _on_done(self, ident: bytes, peer: Peer | None, frames: list[bytes]) -> None:
        if peer is not None:
            peer.done = True
            self._check_done()

    def _drop(self, ident: bytes, what: str) -> None:
        self.malformed += 1
        self._throttle.warning(
            "malformed",
            "%s: dropped a malformed message from connection %s: %s "
            "(%d dropped so far)",
            self.name,
            ident.hex()[:16] or "?",
            what,
            self.malformed,
        )

    # -- sending -------------------------------------------------------------

    def _send_loop(self) -> None:
        next_beat = monotonic()
        while True:
            self._wake.wait(max(0.0, next_beat - monotonic()))
            self._wake.clear()
            now = monotonic()
            try:
                self._flush()
                if now >= next_beat:
                    next_beat = now + self.peers.heartbeat()
                    self._beat(now)
                    self.pool.reap(now)
                    self._share(tick=True)
            except Exception:  # a bug must not stop the heartbeats and acks
                self._throttle.exception("send", "%s: unexpected error", self.name)

    def _share(self, tick: bool) -> None:
        """Move credit between the webs (see greenpipe.credit); send the changes."""
        for account, change, message in self.peers.share(tick, self.name):
            if not self._send(account.key, message):  # full: as for an unsent ACKS
                self.shares.unsent(account, change)

    def _flush(self) -> None:
        beat = None
        for ident, peer in list(self.peers.by_ident.items()):
            if peer.progress_due and (peer.ok or peer.results):
                beat = beat or self._figures()  # the heartbeat brought forward:
                self._send_beat(ident, peer, beat)  # a job's last report first
            answers = peer.take()
            if answers is not None:
                if not self._send(ident, protocol.encode_acks(*answers)):
                    peer.put_back(*answers)  # full: next time

    def _figures(self) -> list[bytes]:
        pool = self.pool
        return protocol.encode_heartbeat(pool.handled, pool.failed, self.refused,
                                         pool.run_sum, pool.run_counts,
                                         pool.overrunning)  # fmt: skip

    def _beat(self, now: float) -> None:
        beat = self._figures()
        for ident, peer in list(self.peers.by_ident.items()):
            if peer.silent(now):
                log.info("%s: %s went silent; forgetting it", self.name, peer.name)
                self._forget(ident)
            else:
                self._send_beat(ident, peer, beat)

    def _send_beat(self, ident: bytes, peer: Peer, beat: list[bytes]) -> None:
        """A heartbeat to one web, with its jobs' progress reports if any (the
        last of each since the previous one; kept for the next if unsent)."""
        frames = beat
        if peer.progress:
            try:
                frames = [*beat, protocol.encode_progress(peer.progress)]
            except (struct.error, ValueError, OverflowError):  # Job.progress
                # checks: a bug there costs the reports, never the heartbeat
                self._throttle.exception("progress", "%s: progress reports dropped",
                                         self.name)  # fmt: skip
        if self._send(ident, frames) or frames is beat:
            peer.progress.clear()  # sent, or dropped: kept only for a full queue
            peer.progress_due = False

    def _send(self, ident: bytes, frames: list[bytes]) -> bool:
        """Send to one web without waiting; False if its queue is full."""
        sent = self.router.send(ident, frames)
        if sent is None:  # that connection is gone
            self._forget(ident)
            return True
        return sent

    def _forget(self, ident: bytes) -> None:
        if self.peers.forget(ident) and self._draining:
            self._check_done()

    def _check_done(self) -> None:
        if self.peers.all_done:
            self._peers_done.set()


def run(settings: WorkerSettings) -> int:
    """server.py's body: load the handler, bind, serve until SIGTERM/SIGINT."""
    handler = load_handler(settings.handler)
    if settings.app:
        handler = in_app_context(handler, settings.app)
    worker = Worker(settings, handler)
    worker.bind()

    def on_signal() -> None:
        if worker.stop():
            log.warning("%s: second signal; exiting now", worker.name)
            raise SystemExit(1)

    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, on_signal)
    worker.serve()
    return 0
