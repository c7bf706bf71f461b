"""Whether a request greenlet has already given others a turn (a group commit).

The web server yields once per keep-alive request so a busy connection cannot
starve the dispatcher; a request that parked for its group commit has yielded
already, so the server skips its own (design notes, "No double yield").
"""

from __future__ import annotations

from greenlet import getcurrent

_parked: object = None  # the last greenlet that waited for a group commit


def waited() -> None:
    """Note that the calling greenlet has just waited (and so given a turn)."""
    global _parked
    _parked = getcurrent()


def took_turn() -> bool:
    """True if the calling greenlet waited for a group commit since last asked.

    A request that waited has given the dispatcher (and everyone else) a turn:
    the web server's yield after each keep-alive request is then redundant.
    """
    global _parked
    if _parked is getcurrent():
        _parked = None
        return True
    return False
