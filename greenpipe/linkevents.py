"""A link's words: the states it is in and the events it returns to the dispatcher."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, NamedTuple


class LinkState(StrEnum):
    """A link's state, as /stats, /healthz and /metrics show it."""

    CONNECTING = "connecting"  # waiting for READY (first time, or after a leave)
    READY = "ready"  # takes jobs while it has credit
    FULL = "full"  # ready, but as many jobs in flight as the worker allows
    LOST = "lost"  # crashed, hung or cut off; its jobs went elsewhere; reconnecting
    LEAVING = "leaving"  # said BYE: finishing what it holds, takes nothing new


CONNECTING, READY, FULL = LinkState.CONNECTING, LinkState.READY, LinkState.FULL
LOST, LEAVING = LinkState.LOST, LinkState.LEAVING


class Happened(StrEnum):
    """What a message or a monitor event did to a link (`Event.what`)."""

    JOINED = "joined"  # in the rotation (detail: "ready", "back", or "" for PUSH)
    # detail: (jobs done without a result, [(job, status, payload)], stray acks)
    ACKED = "acked"
    CREDIT = "credit"  # the worker moved this web's share (detail: the change)
    LEAVING = "leaving"  # the worker said BYE: no new jobs (detail: jobs it holds)
    REFUSED = "refused"  # BYE before READY: the worker refused (detail: reason)
    LOST = "lost"  # take its jobs back (detail: (reason, graceful))
    HELLO_DUE = "hello_due"  # the connection is up: greet the worker
    HANDSHAKE_FAILED = "handshake_failed"  # CURVE said no (detail: why)
    MISMATCH = "mismatch"  # READY of another protocol version (detail: its version)
    MALFORMED = "malformed"  # dropped (detail: what was wrong)


class Event(NamedTuple):
    """One thing that happened on a link, for the dispatcher to react to."""

    what: Happened
    detail: Any = None
