"""A plain ZeroMQ PULL worker as the web sees it: PUSH, at most once, no acks."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import zmq.green as zmq

from greenpipe.jobs import Envelope
from greenpipe.link import LOST, PUSH_HWM, READY, Event, Link

log = logging.getLogger("greenpipe.link")


class PushLink(Link):
    """A plain ZeroMQ PULL worker (any language): PUSH, at most once, no acks.

    Ready once the ZMTP handshake completes; jobs go out as a single frame, the
    request body, which is what a foreign PULL worker expects. A job handed to
    libzmq counts as delivered: if the worker dies, what sat in buffers is lost.
    """

    reliable = False  # at most once

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.credit = PUSH_HWM  # no acks: libzmq's queue is the only bound

    def _socket(self) -> zmq.Socket:
        sock = self._context.socket(zmq.PUSH)
        # At most once: nothing queued to a connection not yet complete.
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.SNDHWM, PUSH_HWM)
        return sock

    def can_take(self) -> bool:
        return self.state == READY

    def assign(self, job: Envelope) -> None:
        pass  # nothing comes back to settle: not held

    def needs_hello(self) -> bool:
        return False  # a plain PULL socket speaks no greenpipe

    def handshake(self) -> bool:
        self.connected = True
        self.state = READY
        log.info("plain PULL worker %s connected (at most once)", self.name)
        return True

    def disconnected(self, now: float) -> list[Event]:
        self.connected = False
        if self.state == READY:
            self.state = LOST
            log.warning("plain PULL worker %s disconnected", self.name)
        return []  # what it was sent is gone or handled: at most once

    def take_back(self, graceful: bool) -> list[Envelope]:
        self.state = LOST  # libzmq reconnects it; the handshake brings it back
        return []

    def deliver(self, jobs: Sequence[Envelope], now: float, timeout_ms: int) -> int:
        """One frame per job, its body, which is what a foreign PULL worker expects."""
        sent = 0
        for job in jobs:
            if not self.send([job.key, job.body]):
                break
            sent += 1
        self.sent += sent
        return sent
