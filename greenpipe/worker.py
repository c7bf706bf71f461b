"""The worker side of the bridge: receive jobs, run the handler, acknowledge.

One ROUTER bound on the worker's port serves every web that connects; each
answer (READY, ACKS, HEARTBEAT, BYE) goes back on the connection the web used,
so a worker needs no configuration but its port. The receive greenlet is the
only one waiting on the socket; handlers run in a pool of CONCURRENCY
greenlets; a sender greenlet batches acknowledgements and sends heartbeats
from this process's own event loop, so a loop that stops turning stops them.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import time
import traceback
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
import zmq.green as zmq
from greenlet import getcurrent

from greenpipe import handling, protocol
from greenpipe.config import WorkerSettings
from greenpipe.credit import Account, Shares
from greenpipe.curve import (
    DOMAIN,
    Allowlist,
    Keypair,
    fingerprint,
    load_allowlist,
    load_secret,
)
from greenpipe.errors import ConfigError, LinkError, ProtocolError
from greenpipe.handling import NO_POLICY, Cancelled, JobTimeout, Policy, run_handler
from greenpipe.jobs import Handler, Job
from greenpipe.throttle import Throttle
from greenpipe.values import loopback

log = logging.getLogger(__name__)
monotonic = time.monotonic

MAX_PEERS = 256  # webs remembered at once; the stalest is forgotten first
NO_DEADLINE = float("inf")


def load_handler(spec: str, setting: str = "HANDLER") -> Handler:
    """Import ``package.module:NAME`` (a callable or a `Handlers` registry).

    Errors name the setting, the spec and what went wrong.
    """
    module_name, _, attr_path = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"{setting}: cannot import module {module_name!r} from {spec!r} ({exc}); "
            "check the spelling and that it is on PYTHONPATH"
        ) from None
    except (ValueError, TypeError) as exc:  # a declaration refused as it ran
        raise ConfigError(
            f"{setting}: importing {module_name!r} raised {type(exc).__name__} at "
            f"{_user_line(exc)}: {exc}"
        ) from None
    for attr in attr_path.split("."):
        target = getattr(target, attr, None)
        if target is None:
            raise ConfigError(
                f"{setting}: {module_name} has no {attr_path!r} (from {spec!r}); "
                "check the name after the colon"
            )
    if not callable(target):
        raise ConfigError(
            f"{setting}: {spec!r} is a {type(target).__name__}, not a callable"
        )
    return target


def _user_line(exc: BaseException) -> str:
    """file:line of the innermost frame of `exc` outside greenpipe (the user's)."""
    where = "?"
    for frame in traceback.extract_tb(exc.__traceback__):
        if os.sep + "greenpipe" + os.sep not in frame.filename and not (
            frame.filename.startswith("<frozen")
        ):
            where = f"{frame.filename}:{frame.lineno}"
    return where


class Peer:
    """A web connected to this worker, known by the routing id of its connection."""

    __slots__ = ("name", "heartbeat", "last_seen", "done", "ok", "results", "account")

    def __init__(self, name: str, heartbeat: float, account: Account) -> None:
        self.account = account  # its share of this worker's capacity
        self.name = name
        self.heartbeat = heartbeat  # seconds, as the web asked in HELLO
        self.last_seen = monotonic()
        self.done = False  # the web said DONE: nothing more will come from it
        self.ok: list[bytes] = []  # ids of jobs done, not yet acknowledged
        self.results: list[bytes] = []  # failures and awaited results, encoded


class Worker:
    """Runs a handler for every job the connected webs send; see module docstring."""

    def __init__(
        self,
        settings: WorkerSettings,
        handler: Handler,
        context: zmq.Context | None = None,
    ) -> None:
        self.settings = settings
        self.handler = handler
        self.name = f"worker :{settings.port}"
        self.endpoint = ""
        self._context = context or zmq.Context.instance()
        self._sock: zmq.Socket | None = None
        # Handlers run in raw greenlets (a gevent.pool costs a third of the time
        # per job); `_busy` counts them, `_active` gives each its deadline.
        self._busy = 0
        self._active: dict[Any, tuple[float, Job]] = {}
        # job id -> the greenlets that hold it, started or not (CANCEL); two
        # when a web re-sent a job this worker still runs (after a loss)
        self._running: dict[bytes, list[Any]] = {}
        self._cancelled: set[Any] = set()  # greenlets a CANCEL reached before they ran
        self.overrunning = 0  # handlers past their time limit at the last check
        self._thrown: set[Any] = set()  # handlers JobTimeout was thrown into
        # The handler's policy by job name (a `Handlers` registry has one);
        # RETRIES and RETRY_BACKOFF make the policy of handlers declaring none.
        self._policy: Callable[[str], Policy] = getattr(
            handler, "policy", lambda name: NO_POLICY
        )
        # The handlers' own time limits, announced in READY (the web's backstop).
        self._limits: dict[str, float] = getattr(handler, "time_limits", {})
        self._default_policy = NO_POLICY
        if settings.retries:
            self._default_policy = Policy(
                settings.retries,
                settings.retry_backoff,
                max(NO_POLICY.max_backoff, settings.retry_backoff),
            )
        self._slot = gevent.event.Event()  # set when a handler returns
        self._idle = gevent.event.Event()  # set when none runs
        self._idle.set()
        self._peers: dict[bytes, Peer] = {}
        self._wake = gevent.event.Event()  # acks to send
        self._peers_done = gevent.event.Event()  # every web said DONE
        self._stopping = gevent.event.Event()
        self._draining = False
        self._throttle = Throttle(log)
        self.received = self.handled = self.failed = self.malformed = 0
        self.ended: dict[int, int] = {}  # runs not OK, by result status: the summary
        self._run_sum = 0.0  # seconds in handlers, all jobs
        self._run_counts = [0] * (len(protocol.RUN_BUCKETS) + 1)
        self._allow: Allowlist | None = None  # CURVE's ZAP handler, when on
        self.shares = Shares(settings.concurrency)  # credit, shared by the webs

    # -- lifecycle ------------------------------------------------------------------

    def bind(self) -> str:
        """Bind the ROUTER; returns the resolved endpoint (the real port for port 0)."""
        keys = self._curve()
        sock = self._context.socket(zmq.ROUTER)
        if keys is not None:  # before bind: no plain-text moment
            sock.curve_secretkey = keys.secret
            sock.curve_publickey = keys.public
            sock.curve_server = True
            sock.zap_domain = DOMAIN
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a vanished web raises, not drops
        sock.setsockopt(zmq.MAXMSGSIZE, self.settings.max_frame)
        sock.setsockopt(zmq.HANDSHAKE_IVL, 3_000)  # half-open junk connections go away
        sock.setsockopt(zmq.SNDHWM, 10_000)
        sock.setsockopt(zmq.RCVHWM, 10_000)
        address = f"tcp://{self.settings.host}:{self.settings.port or '*'}"
        try:
            sock.bind(address)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise LinkError(
                f"cannot bind {address}: {exc}; is another worker (greenpipe "
                f"worker, server.py) or program on port {self.settings.port}? "
                "Stop it or pick another port (--port, 0 for any)"
            ) from None
        self._sock = sock
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.name = f"worker :{self.endpoint.rsplit(':', 1)[1]}"
        if keys is not None:
            log.info(
                "%s: CURVE on: server key %s, %d web keys allowed from %s",
                self.name, fingerprint(keys.public),
                len(self._allow.allowed), self.settings.curve_allow,  # type: ignore[union-attr]
            )  # fmt: skip
        elif not loopback(self.settings.host):
            log.warning(
                "%s: listening on %s beyond loopback without CURVE: anyone who can "
                "reach this port can send jobs and read them on the wire; set "
                "CURVE_SECRET and CURVE_ALLOW (python -m greenpipe keys)",
                self.name,
                self.endpoint,
            )
        return self.endpoint

    def _curve(self) -> Keypair | None:
        """Load the keys and start the ZAP handler, if CURVE_SECRET is set."""
        settings = self.settings
        if not settings.curve_secret:
            return None
        keys = load_secret(settings.curve_secret, "CURVE_SECRET")
        allowed = load_allowlist(settings.curve_allow, "CURVE_ALLOW")
        self._allow = Allowlist(self._context, allowed, settings.curve_allow)
        return keys

    @property
    def refused(self) -> int:
        """Handshakes the allowlist refused (0 without CURVE)."""
        return self._allow.refused if self._allow is not None else 0

    def serve(self) -> None:
        """Serve until `stop`, then drain: BYE, finish and acknowledge, close."""
        if self._sock is None:
            self.bind()
        greenlets = [gevent.spawn(self._receive), gevent.spawn(self._send_loop)]
        log.info(
            "%s: listening on %s (pid %d, concurrency %d, handler %s)",
            self.name,
            self.endpoint,
            os.getpid(),
            self.settings.concurrency,
            self.settings.handler,
        )
        self._stopping.wait()
        self._drain()
        gevent.killall(greenlets, block=False)
        if self._allow is not None:
            self._allow.close()
        ended = self.ended
        log.info(
            "%s: stopped; handled %d jobs (%d failed, %d to be retried, %d "
            "cancelled) of %d received, dropped %d malformed messages; held at "
            "most %d jobs at once (CONCURRENCY %d, shared by the webs)",
            self.name,
            self.handled,
            ended.get(protocol.FAILED, 0),
            ended.get(protocol.RETRY, 0),
            ended.get(protocol.CANCELLED, 0),
            self.received,
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
        webs = len(self._peers)
        log.info("%s: stopping; saying BYE to %d %s", self.name, webs,
                 "web" if webs == 1 else "webs")  # fmt: skip
        for ident in list(self._peers):
            self._send(ident, protocol.encode_bye("worker is stopping"))
        # DONE from a web means everything it sent is here: only then can the
        # pool's emptiness mean "nothing left".
        self._check_done()
        self._peers_done.wait(max(0.0, deadline - monotonic()))
        if not self._idle.wait(max(0.0, deadline - monotonic())):
            log.warning(
                "%s: %d jobs still running after DRAIN_TIMEOUT %g s; "
                "the web re-sends them",
                self.name,
                self._busy,
                self.settings.drain_timeout,
            )
        self._flush()
        sock, self._sock = self._sock, None
        if sock is not None:
            # Linger long enough for the last acknowledgements to leave.
            sock.close(linger=int(1000 * min(1.0, max(0.2, deadline - monotonic()))))

    # -- receiving --------------------------------------------------------------------

    def _receive(self) -> None:
        sock = self._sock
        count = 0
        while sock is not None and not sock.closed:
            try:
                frames = sock.recv_multipart()
            except zmq.ZMQError:
                return  # closed while draining
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
        peer = self._peers.get(ident)
        if kind == protocol.JOBS:
            if peer is None:
                self._drop(ident, "jobs from a connection that never said HELLO")
                return
            peer.last_seen = monotonic()
            if len(frames) != 3:
                self._drop(ident, f"JOBS with {len(frames) - 2} frames, not 1")
                return
            try:
                for job in protocol.decode_jobs(frames[2]):
                    self._start(peer, job)
            except ProtocolError as exc:
                self._drop(ident, str(exc))
        elif kind == protocol.PING:
            if peer is not None:  # else: from a web this worker forgot; it will HELLO
                peer.last_seen = monotonic()
                try:
                    seq = protocol.decode_ping(frames[1:])
                except ProtocolError as exc:
                    self._drop(ident, str(exc))
                    return
                if self.shares.applied(peer.account, seq):
                    self._share(tick=False)  # a confirmed cut: grant it onwards
        elif kind == protocol.HELLO:
            self._hello(ident, peer, frames[1:])
        elif kind == protocol.CANCEL and len(frames) == 3:
            if peer is not None:
                self._cancel(frames[2])
        elif kind == protocol.DONE and len(frames) == 2:
            if peer is not None:
                peer.done = True
                self._check_done()
        else:
            self._drop(
                ident,
                f"unexpected message kind {kind[:8]!r} ({len(frames) - 1} frames)",
            )

    def _hello(self, ident: bytes, peer: Peer | None, frames: list[bytes]) -> None:
        try:
            version, heartbeat, web_name = protocol.decode_hello(frames)
        except ProtocolError as exc:
            self._drop(ident, str(exc))
            return
        if version != protocol.VERSION:
            reason = f"{self.name} speaks protocol {protocol.VERSION}, not {version}"
            self._send(ident, protocol.encode_bye(reason))
            return
        if self._draining:
            self._send(ident, protocol.encode_bye("worker is stopping"))
            return
        if peer is None:
            if len(self._peers) >= MAX_PEERS:
                stalest = min(self._peers, key=lambda key: self._peers[key].last_seen)
                self._forget(stalest)
            account = self.shares.join(ident)
            peer = self._peers[ident] = Peer(web_name, heartbeat, account)
            log.info("%s: %s connected", self.name, web_name)
        peer.last_seen = monotonic()
        if peer.account.waiting:
            self._share(tick=False)  # READY once its share is free
        else:  # a repeated HELLO: READY again, with what it has now
            self._send(ident, self._ready(peer.account))

    def _ready(self, account: Account) -> list[bytes]:
        return protocol.encode_ready(
            account.credit, self.settings.max_frame, self.name, account.seq,
            self._limits,
        )  # fmt: skip

    def _share(self, tick: bool) -> None:
        """Move credit between the webs (see greenpipe.credit); send the changes."""
        for account, change in self.shares.rebalance(tick):
            if change == 0:
                message = self._ready(account)
            else:
                message = protocol.encode_credit(change, account.seq)
            if not self._send(account.key, message):  # full: as for an unsent ACKS
                self.shares.unsent(account, change)

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

    # -- handling ------------------------------------------------------------

    def _start(self, peer: Peer, job: Job) -> None:
        self.received += 1
        self.shares.started(peer.account)  # held from now: running or waiting here
        job.worker = self.name
        while self._busy >= self.settings.concurrency:
            self._slot.clear()  # full: stop reading until a handler returns
            self._slot.wait()
        self._busy += 1
        self._idle.clear()
        runner = gevent.spawn_raw(self._run, peer, job)  # runs at the next switch
        self._running.setdefault(job.raw_id, []).append(runner)

    def _run(self, peer: Peer, job: Job) -> None:
        me = getcurrent()
        started = monotonic()
        policy = self._policy(job.name)
        if policy is NO_POLICY:
            policy = self._default_policy
        if policy.timeout is not None:
            job.timeout = policy.timeout  # the handler's own limit wins
        deadline = started + job.timeout if job.timeout else NO_DEADLINE
        self._active[me] = (deadline, job)
        try:
            if me in self._cancelled:  # a CANCEL came before this greenlet ran
                log.warning("%s: job %s cancelled before it started", self.name, job.id)
                status, payload = protocol.CANCELLED, b"cancelled before it started"
            else:
                status, payload = run_handler(self.handler, job, self.name, policy)
        finally:
            del self._active[me]
            self._cancelled.discard(me)
            runners = self._running[job.raw_id]
            runners.remove(me)
            if not runners:
                del self._running[job.raw_id]
            self._busy -= 1
            self.shares.finished(peer.account)
            self._slot.set()
            if not self._busy:
                self._idle.set()
        took = monotonic() - started
        self._run_sum += took
        self._run_counts[bisect_left(protocol.RUN_BUCKETS, took)] += 1
        self.handled += 1
        if status != protocol.OK:
            self.failed += 1  # (the web's figures count retries and cancels here)
            self.ended[status] = self.ended.get(status, 0) + 1
        if status == protocol.OK and not payload:
            peer.ok.append(job.raw_id)
        else:
            peer.results.append(protocol.encode_result(job.raw_id, status, payload))
        self._wake.set()

    def _reap(self, now: float) -> None:
        """Interrupt handlers past their deadline (checked every heartbeat).

        `JobTimeout` is thrown again at every heartbeat until the handler ends:
        one that swallowed it (``except BaseException``) keeps getting it, and
        is counted as overrunning meanwhile (heartbeats, /stats, /metrics).
        Only cooperative handlers can be interrupted; one holding the event
        loop stops the heartbeats too, and the web treats the worker as frozen.
        """
        overrunning, thrown = 0, set()
        for runner, (deadline, job) in list(self._active.items()):
            if deadline <= now:
                thrown.add(runner)
                if runner in self._thrown:
                    overrunning += 1  # it had one heartbeat to end, and did not
                    self._throttle.warning(
                        f"overrun:{job.name}",
                        "%s: job %s (%s) still runs %.1f s past its %g s limit",
                        self.name, job.id, job.name, now - deadline, job.timeout,
                    )  # fmt: skip
                self._interrupt(runner, JobTimeout)
        self.overrunning, self._thrown = overrunning, thrown

    def _cancel(self, ids: bytes) -> None:
        """CANCEL from a web: stop every run of those jobs this worker holds.

        A run whose greenlet has started gets `Cancelled` thrown in; one not
        started yet (its JOBS read in the same batch) answers CANCELLED
        without running the handler.
        """
        for raw_id in ids.split():
            for runner in self._running.get(raw_id, ()):
                if runner in self._active:
                    self._interrupt(runner, Cancelled)
                else:
                    self._cancelled.add(runner)

    def _interrupt(self, runner: Any, exc: type[BaseException]) -> None:
        """Throw `exc` into a handler's greenlet at the hub's next turn, if it runs.

        As `gevent.kill`, which is asynchronous too, but a handler that returned
        meanwhile is left alone: a throw into its dead greenlet would raise in
        the hub instead (a traceback on stderr for each).
        """

        def throw() -> None:
            if runner in self._active:
                runner.throw(exc)

        gevent.get_hub().loop.run_callback(throw)

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
                    intervals = [peer.heartbeat for peer in self._peers.values()]
                    next_beat = now + min(intervals, default=0.5)
                    self._beat(now)
                    self._reap(now)
                    self._share(tick=True)
            except Exception:  # a bug must not stop the heartbeats and acks
                self._throttle.exception("send", "%s: unexpected error", self.name)

    def _flush(self) -> None:
        for ident, peer in list(self._peers.items()):
            if peer.ok or peer.results:
                ok, results = peer.ok, peer.results
                peer.ok, peer.results = [], []
                if not self._send(ident, protocol.encode_acks(ok, results)):
                    peer.ok[:0], peer.results[:0] = ok, results  # full: next time

    def _beat(self, now: float) -> None:
        beat = protocol.encode_heartbeat(
            self.handled,
            self.failed,
            self.refused,
            self._run_sum,
            self._run_counts,
            self.overrunning,
        )
        for ident, peer in list(self._peers.items()):
            if now - peer.last_seen > max(5.0, 10 * peer.heartbeat):
                log.info("%s: %s went silent; forgetting it", self.name, peer.name)
                self._forget(ident)
            else:
                self._send(ident, beat)

    def _send(self, ident: bytes, frames: list[bytes]) -> bool:
        """Send to one web without waiting; False if its queue is full."""
        sock = self._sock
        if sock is None:
            return False
        try:
            sock.send_multipart([ident, *frames], zmq.NOBLOCK)
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:  # that connection is gone
                self._forget(ident)
                return True
            raise
        return True

    def _forget(self, ident: bytes) -> None:
        peer = self._peers.pop(ident, None)
        self.shares.leave(ident)
        if peer is not None and self._draining:
            self._check_done()

    def _check_done(self) -> None:
        if all(peer.done for peer in self._peers.values()):
            self._peers_done.set()


def in_app_context(handler: Handler, spec: str) -> Handler:
    """Run `handler` inside the Flask app named by `spec` (APP), created once.

    Handlers then use their app's config and extensions (``current_app``).
    """
    app = load_handler(spec, "APP")
    if not hasattr(app, "app_context"):
        raise ConfigError(
            f"APP: {spec!r} is a {type(app).__name__}, not a Flask app; name the "
            "app object, e.g. myapp:app"
        )

    return handling.in_app_context(handler, app)


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
