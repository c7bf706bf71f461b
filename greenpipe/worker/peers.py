"""The webs as a worker sees them: HELLO, READY, credit, silence, forgetting.

The mirror of `greenpipe.link` on the worker's side. `Peers` keeps one `Peer`
per connection (its routing id) and the worker's capacity shared among them
(`greenpipe.credit.Shares`); it decides what to answer and returns the
frames; the worker (`greenpipe.worker.process`) sends them and reports what
could not leave. READY announces the handlers' own time limits and the job
names they run (`announced`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

from greenpipe import protocol
from greenpipe.credit import Account, Shares

log = logging.getLogger("greenpipe.worker")  # one logger for the package's lines
monotonic = time.monotonic

MAX_PEERS = 256  # webs remembered at once; the stalest is forgotten first


def announced(handler: Any, queues: str = "default") -> protocol.Serves:
    """What READY says `handler` runs: a `Handlers` registry's names and whether
    it has a default (a plain callable runs every name), from `queues` (QUEUES)."""
    listened = frozenset(queue.encode() for queue in queues.split(","))
    names = getattr(handler, "names", None)
    if names is None or not hasattr(handler, "has_default"):
        return protocol.Serves(frozenset(), True, listened)
    raw = frozenset(name.encode() for name in names)
    return protocol.Serves(raw, bool(handler.has_default), listened)


class Peer:
    """A web connected to this worker, known by the routing id of its connection."""

    __slots__ = ("name", "heartbeat", "last_seen", "done", "ok", "results", "account",
                 "progress", "progress_due")  # fmt: skip

    def __init__(self, name: str, heartbeat: float, account: Account) -> None:
        self.account = account  # its share of this worker's capacity
        self.name = name
        self.heartbeat = heartbeat  # seconds, as the web asked in HELLO
        self.last_seen = monotonic()
        self.done = False  # the web said DONE: nothing more will come from it
        self.ok: list[bytes] = []  # ids of jobs done, not yet acknowledged
        self.results: list[bytes] = []  # failures and awaited results, encoded
        # Its jobs' last progress reports, for the next heartbeat (`Job.progress`)
        self.progress: dict[bytes, tuple[float, float, str]] = {}
        self.progress_due = False  # a job ended with its last report unsent

    def answer(self, raw_id: bytes, status: int, payload: bytes) -> None:
        """Keep a run's outcome for the next ACKS to this web."""
        if status == protocol.OK and not payload:
            self.ok.append(raw_id)
        else:
            self.results.append(protocol.encode_result(raw_id, status, payload))

    def take(self) -> tuple[list[bytes], list[bytes]] | None:
        """The outcomes not acknowledged yet (ok ids, results), or None if none."""
        if not (self.ok or self.results):
            return None
        taken = self.ok, self.results
        self.ok, self.results = [], []
        return taken

    def silent(self, now: float) -> bool:
        """Not heard from in 10 of its heartbeats (5 s at least): to forget."""
        return now - self.last_seen > max(5.0, 10 * self.heartbeat)

    def put_back(self, ok: list[bytes], results: list[bytes]) -> None:
        """Outcomes `take` gave that could not be sent (queue full): next time."""
        self.ok[:0], self.results[:0] = ok, results


class Peers:
    """The webs connected to this worker, and the credit each was promised."""

    def __init__(
        self,
        capacity: int,
        max_frame: int,
        limits: Mapping[str, float],
        serves: protocol.Serves = protocol.EVERYTHING,
    ) -> None:
        self.by_ident: dict[bytes, Peer] = {}
        self.shares = Shares(capacity)  # credit, shared by the webs
        self._max_frame = max_frame
        self._limits = dict(limits)  # the handlers' own time limits, by job name
        self.serves = serves  # the job names its handlers run (routing)

    def __len__(self) -> int:
        return len(self.by_ident)

    def get(self, ident: bytes) -> Peer | None:
        return self.by_ident.get(ident)

    def hello(
        self, ident: bytes, frames: list[bytes], name: str, draining: bool
    ) -> list[bytes] | None:
        """HELLO from connection `ident`: the answer to send it, or None.

        None: the web waits for READY until its share is free; call `share`.
        A new web is remembered (the stalest forgotten beyond MAX_PEERS); a
        repeated HELLO gets READY again. Raises ProtocolError (malformed).
        """
        version, heartbeat, web_name = protocol.decode_hello(frames)
        if version != protocol.VERSION:
            reason = f"{name} speaks protocol {protocol.VERSION}, not {version}"
            return protocol.encode_bye(reason)
        if draining:
            return protocol.encode_bye("worker is stopping")
        peer = self.by_ident.get(ident)
        if peer is None:
            if len(self.by_ident) >= MAX_PEERS:
                by_ident = self.by_ident
                self.forget(min(by_ident, key=lambda key: by_ident[key].last_seen))
            account = self.shares.join(ident)
            peer = self.by_ident[ident] = Peer(web_name, heartbeat, account)
            log.info("%s: %s connected", name, web_name)
        peer.last_seen = monotonic()
        if peer.account.waiting:
            return None  # READY once its share is free
        return self.ready(peer.account, name)  # again, with what it has now

    def ready(self, account: Account, name: str) -> list[bytes]:
        """READY for `account`: its credit, the handlers' own time limits, and
        the job names they run."""
        return protocol.encode_ready(
            account.credit, self._max_frame, name, account.seq, self._limits,
            self.serves,
        )  # fmt: skip

    def ping(self, peer: Peer, frames: list[bytes]) -> bool:
        """PING from `peer`: True if a cut it confirms freed credit (then `share`).

        Raises ProtocolError (malformed).
        """
        peer.last_seen = monotonic()
        seq = protocol.decode_ping(frames)
        return self.shares.applied(peer.account, seq)

    def share(
        self, tick: bool, name: str
    ) -> Iterator[tuple[Account, int, list[bytes]]]:
        """Move credit between the webs (see greenpipe.credit).

        Yields (account, change, frames to send): READY for a web that waited,
        CREDIT for the others. What could not be sent goes to `Shares.unsent`.
        """
        for account, change in self.shares.rebalance(tick):
            if change == 0:
                yield account, change, self.ready(account, name)
            else:
                yield account, change, protocol.encode_credit(change, account.seq)

    def heartbeat(self) -> float:
        """Seconds to the next heartbeat: the shortest any web asked for."""
        return min((peer.heartbeat for peer in self.by_ident.values()), default=0.5)

    def forget(self, ident: bytes) -> bool:
        """Forget a web (gone, silent, or the stalest); True if it was known.

        Its account leaves the shares; jobs of it still running count until
        they end.
        """
        peer = self.by_ident.pop(ident, None)
        self.shares.leave(ident)
        return peer is not None

    @property
    def all_done(self) -> bool:
        """Every web said DONE: nothing more will come (true with no web)."""
        return all(peer.done for peer in self.by_ident.values())
