"""The workers as a whole: their links, the barrier, membership and liveness.

A `Fleet` makes one link per configured worker (with CURVE keys when set),
knows when every one of them said READY once (the barrier), adds and retires
workers live, and every heartbeat greets, pings and names the links to lose.
It returns what it finds (`tick`: events, losses among them); what to do
about them (re-send a lost link's jobs) is the dispatcher's business.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import gevent.event
import zmq.green as zmq

from greenpipe import protocol
from greenpipe.config import Endpoint, PipeSettings, loopback
from greenpipe.curve import Keypair, fingerprint, load_public, load_secret
from greenpipe.link import LEAVING, READY, Event, Happened, Inbox, Link
from greenpipe.pushlink import PushLink
from greenpipe.routing import Routes

log = logging.getLogger(__name__)

WAITING_LOG_AFTER = 2.0  # seconds; workers started at the same time are not missing
WAITING_LOG_EVERY = 5.0  # seconds between two lines naming the missing workers

# Makes the link for one configured worker (tests pass one without sockets).
LinkFactory = Callable[[int, Endpoint, Inbox], Link]


class Fleet:
    """The configured workers' links, in configured order, and the barrier."""

    def __init__(
        self,
        settings: PipeSettings,
        context: zmq.Context,
        inbox: Inbox,
        link_factory: LinkFactory | None = None,
    ) -> None:
        self.settings = settings
        self._context = context
        self._inbox = inbox  # where the links' readers say they read something
        self._make = link_factory or self._make_link
        self.links: list[Link] = [
            self._make(index, endpoint, inbox)
            for index, endpoint in enumerate(settings.workers)
        ]
        self.acknowledged = [link for link in self.links if link.reliable]
        self.removing: list[Link] = []  # removed live: finishing what they hold
        self.barrier = gevent.event.Event()
        # Who runs which job names, and the round-robin among them; the same
        # list of links: it sees additions and removals.
        self.routes = Routes(self.links, self.removing)
        self.rotation = self.routes.rotation
        # (this web's keypair, workers' public key) when CURVE is on.
        self.curve_keys: tuple[Keypair, bytes] | None = self._curve(settings)
        self._waiting_since: float | None = None  # first tick without the barrier
        self._waiting_logged = 0.0  # when the missing workers were last logged

    def _make_link(self, index: int, endpoint: Endpoint, inbox: Inbox) -> Link:
        kind = Link if endpoint.reliable else PushLink
        return kind(index, endpoint, self._context, inbox)

    def _curve(self, settings: PipeSettings) -> tuple[Keypair, bytes] | None:
        """CURVE on every link when CURVE_SECRET is set; else warn beyond loopback."""
        if settings.curve_secret:
            keys = load_secret(settings.curve_secret, "CURVE_SECRET")
            server = load_public(settings.curve_server, "CURVE_SERVER")
            for link in self.links:
                link.curve = (keys, server)
            log.info("CURVE on: this web's key %s, workers' key %s",
                     fingerprint(keys.public), fingerprint(server))  # fmt: skip
            return keys, server
        remote = [link.name for link in self.links
                  if not loopback(link.endpoint.host)]  # fmt: skip
        if remote:
            log.warning(
                "workers beyond loopback without CURVE (%s): jobs and results "
                "cross the network in plain text and anyone there can impersonate "
                "a worker; set CURVE_SECRET and CURVE_SERVER "
                "(python -m greenpipe keys)",
                ", ".join(remote),
            )
        return None

    # -- lifecycle ---------------------------------------------------------------

    def open(self) -> None:
        for link in self.links:
            link.open()

    def close(self) -> None:
        """Say DONE to every worker that listens (it forgets this web); close all."""
        for link in self.links:
            link.goodbye()

    # -- membership ----------------------------------------------------------------

    def joined(self, link: Link, now: float) -> bool:
        """`link` is in the rotation; True if that met the barrier just now."""
        link.last_seen = now
        first = not link.ever_ready
        link.ever_ready = True
        self.routes.update()  # what it runs may have changed (a new worker there)
        return first and self._check_barrier()

    def needed(self) -> int:
        """Workers READY that meet the barrier: MIN_READY, or all of them."""
        least = self.settings.min_ready
        return len(self.links) if not least else min(least, len(self.links))

    def _check_barrier(self) -> bool:
        if self.barrier.is_set():
            return False
        ready = sum(1 for link in self.links if link.ever_ready)
        if ready < self.needed():
            return False
        total = len(self.links)
        if ready == total:
            log.info("barrier met: %s ready", _all(total))
        else:
            late = [link.name for link in self.links if not link.ever_ready]
            log.info("barrier met: %d of %d workers ready (MIN_READY=%d); %s join "
                     "the rotation when READY", ready, total,
                     self.settings.min_ready, ", ".join(late))  # fmt: skip
        self.barrier.set()
        return True

    def reconfigure(self, endpoints: Sequence[Endpoint]) -> tuple[list[str], list[str]]:
        """Make `endpoints` the workers, live; returns (added, removed) names.

        A new worker joins the rotation after its READY (the barrier, met
        already, is not waited for again). A removed one takes no new job; it
        leaves once what it holds is acknowledged (see `retire_if_done`).
        """
        current = {link.endpoint.address: link for link in self.links
                   if link not in self.removing}  # fmt: skip
        wanted = {endpoint.address: endpoint for endpoint in endpoints}
        added, removed = [], []
        for address, endpoint in wanted.items():
            if address in current:
                continue
            link = self._make(len(self.links), endpoint, self._inbox)
            link.curve = self.curve_keys  # once met, the barrier is not re-run
            self.links.append(link)
            if link.reliable:
                self.acknowledged.append(link)
            link.open()
            added.append(link.name)
        for address, link in current.items():
            if address not in wanted:
                self.removing.append(link)
                link.leave()  # no new jobs; its acknowledgements still count
                removed.append(link.name)
                self.retire_if_done(link)
        self._check_barrier()  # met now if the workers it waited for were removed
        self.routes.update()
        return added, removed

    def retire_if_done(self, link: Link) -> bool:
        """A removed worker holding nothing more: say DONE, close, forget it."""
        if link not in self.removing or link.jobs:
            return False
        link.goodbye()
        self.removing.remove(link)
        self.links.remove(link)
        if link in self.acknowledged:
            self.acknowledged.remove(link)
        self.routes.update()  # the names only it ran are no longer known
        log.info("worker %s removed (sent %d, acknowledged %d)", link.name,
                 link.sent, link.acked)  # fmt: skip
        return True

    # -- liveness ------------------------------------------------------------------

    def hello(self, link: Link, name: str) -> None:
        link.send(protocol.encode_hello(self.settings.heartbeat, name))

    def tick(
        self, now: float, name: str, ack_deadline: float
    ) -> list[tuple[Link, Event]]:
        """Every HEARTBEAT: greet, ping; what happened, and the links to lose.

        A silent link's socket is read first (a busy web may not have read
        it): what that says comes back, in order, before the link's LOST.
        """
        if not self.barrier.is_set():
            self._log_waiting(now)
        timeout = self.settings.heartbeat_timeout
        happened: list[tuple[Link, Event]] = []
        for link in list(self.acknowledged):
            if link.needs_hello():
                if link.connected:  # in case a HELLO went to a worker that died since
                    self.hello(link, name)
                elif link.retry_handshake(now, timeout):
                    log.info("worker %s: trying the handshake again (%s)",
                             link.name, link.handshake_error)  # fmt: skip
                continue
            link.send(protocol.encode_ping(link.credit_seq))
            silent = now - link.last_seen
            if silent > timeout:
                # A busy web may not have read what arrived: silence must be the
                # worker's, not this loop's.
                happened += [(link, event) for event in link.receive_queued(now)]
                silent = now - link.last_seen
            if link.state not in (READY, LEAVING):
                continue  # receive_queued() applied a BYE
            if silent > timeout:
                happened.append((link, _lost(f"no heartbeat for {silent:.1f} s")))
            elif link.jobs:
                overdue = self._overdue(link, now, ack_deadline)
                if overdue:
                    happened.append((link, _lost(overdue)))
        return happened

    def _overdue(self, link: Link, now: float, ack_deadline: float) -> str:
        """Why `link` is lost though it heartbeats: a job past its backstop, or "".

        The backstop is 2 x the job's time limit + HEARTBEAT_TIMEOUT: JOB_TIMEOUT's
        (`ack_deadline`), or the limit the worker announced for the job's name.
        """
        slack, limits = self.settings.heartbeat_timeout, link.limits
        shortest = ack_deadline
        if limits:
            shortest = min(shortest, 2 * min(limits.values()) + slack)
        for job in link.jobs.values():  # oldest first
            if now - job.sent_at <= shortest:
                return ""  # this one and all sent after it are within any deadline
            limit = limits.get(job.name or job.path)
            deadline = ack_deadline if limit is None else 2 * limit + slack
            if now - job.sent_at > deadline:
                return f"job {job.id} not acknowledged within {deadline:.0f} s"
        return ""

    # -- what it holds ---------------------------------------------------------------

    def any_ready(self) -> bool:
        for link in self.links:
            if link.state is READY:
                return True
        return False

    def free_credit(self) -> int:
        """Jobs the ready workers would take now, all together."""
        return sum(max(0, link.credit - len(link.jobs))
                   for link in self.links if link.state is READY)  # fmt: skip

    def in_flight(self) -> int:
        return sum(len(link.jobs) for link in self.links)

    def pushed(self) -> int:
        """Jobs handed to plain PULL workers: at most once, never acknowledged."""
        return sum(link.sent for link in self.links if not link.reliable)

    def states(self) -> str:
        return ", ".join(f"{link.name} {link.reported_state}" for link in self.links)

    def barrier_message(self) -> str:
        waiting = [link.name for link in self.links if not link.ever_ready]
        ready = len(self.links) - len(waiting)
        least = self.settings.min_ready
        needed = f", {self.needed()} needed (MIN_READY)" if least else ""
        failed = {link.name: link.handshake_error for link in self.links
                  if not link.ever_ready and link.handshake_error}  # fmt: skip
        why = (
            "; ".join(f"{name}: {error}" for name, error in failed.items()) + "."
            if failed
            else "is a worker running there (greenpipe worker, or python "
            "server.py in a checkout)?"
        )
        return (
            f"{ready} of {len(self.links)} workers READY after "
            f"{self.settings.ready_timeout:g} s{needed} (waiting on "
            f"{', '.join(waiting)}); {why} Until the barrier is met every "
            "job is refused; MIN_READY=N starts with N workers READY"
        )

    def _log_waiting(self, now: float) -> None:
        """While the barrier waits: which workers, why, and what to run (throttled)."""
        if self._waiting_since is None:
            self._waiting_since = now
        waited = now - self._waiting_since
        if waited < WAITING_LOG_AFTER or now - self._waiting_logged < WAITING_LOG_EVERY:
            return
        self._waiting_logged = now
        missing = [link for link in self.links if not link.ever_ready]
        why = "; ".join(f"{link.name} {_why_not_ready(link)}" for link in missing)
        ports = [link.name.rsplit(":", 1)[1] for link in missing
                 if link.name.startswith("tcp://")]  # fmt: skip
        run = f"greenpipe worker --port {ports[0]}" if ports else "greenpipe worker"
        log.warning(
            "barrier: waited %.0f s for %d of %d %s: %s; jobs wait (up to "
            "READY_TIMEOUT) until %s READY, then are refused. Start each one (%s, "
            "or port=N python server.py in a checkout), fix WORKERS, or set "
            "MIN_READY",
            waited, len(missing), len(self.links),
            "worker" if len(self.links) == 1 else "workers", why,
            f"{self.needed()} are" if self.settings.min_ready else "every worker is",
            run,
        )  # fmt: skip

    def health(self) -> tuple[list[str], dict[str, str]]:
        """(names of the ready workers, {name: why not} for the others)."""
        ready = [link.name for link in self.links if link.state == READY]
        not_ready = {link.name: link.handshake_error or link.reported_state.value
                     for link in self.links if link.state != READY}  # fmt: skip
        return ready, not_ready


def _all(count: int) -> str:
    """The barrier's words: the 1 worker is, both workers are, all 3 workers are."""
    if count == 1:
        return "the 1 worker is"
    return "both workers are" if count == 2 else f"all {count} workers are"


def _lost(reason: str) -> Event:
    return Event(Happened.LOST, (reason, False))


def _why_not_ready(link: Link) -> str:
    if link.handshake_error:
        return f"({link.handshake_error})"
    if link.connected:
        return "(connected, no READY yet)"
    return "(no connection: is anything listening there?)"
