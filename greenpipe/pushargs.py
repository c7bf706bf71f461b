"""What ``push`` is given, checked: a job's name, body, delay and wait.

Each check raises naming the value and what to give instead (`BadJob` for a
delay, ValueError for a programming error such as a negative wait).
"""

from __future__ import annotations

import json as jsonlib
import time
from datetime import datetime
from typing import Any

from greenpipe.errors import BadJob

MISSING: Any = object()  # push(json=) not given (None is a JSON value)


def payload(
    name: str, json: Any, body: bytes | str | None, content_type: str | None
) -> tuple[bytes, bytes, bytes]:
    """(name, body, content type) as bytes, or ValueError naming what is wrong."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"push: the job name must be a non-empty str, got {name!r}")
    raw_name = name.encode("utf-8")
    if len(raw_name) > 255:
        raise ValueError(
            f"push: the job name is {len(raw_name)} bytes of UTF-8; at most 255"
        )
    if json is not MISSING and body is not None:
        raise ValueError("push: give json=... or body=..., not both")
    if json is not MISSING:
        try:
            raw = jsonlib.dumps(json).encode()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"push: json= is not JSON-serialisable ({exc})") from None
        kind = content_type or "application/json"
    else:
        raw = body.encode("utf-8") if isinstance(body, str) else (body or b"")
        if content_type:
            kind = content_type
        elif isinstance(body, str):
            kind = "text/plain; charset=utf-8"
        else:
            kind = "application/octet-stream" if raw else ""
    return raw_name, raw, kind.encode("latin-1")


def not_before(delay: Any, at: Any, horizon: float) -> float:
    """The wall time a delayed job waits for (0: none), or `BadJob` naming why.

    `delay` in seconds, or `at` an aware datetime; at most `horizon` seconds
    ahead (MAX_DELAY). A delay of 0, or a time already past, is no delay.
    """
    if delay is not None and at is not None:
        raise BadJob("push: give delay=... or at=..., not both")
    now = time.time()
    if at is not None:
        if not isinstance(at, datetime) or at.tzinfo is None:
            raise BadJob(
                f"push: at={at!r} is not an aware datetime; give e.g. "
                "datetime.now(timezone.utc) + timedelta(minutes=5)"
            )
        due = at.timestamp()  # exactly: a handler may compare against it
        _check_horizon(due - now, horizon)
        return due if due > now else 0.0
    if delay is None:
        return 0.0
    if (
        isinstance(delay, bool)
        or not isinstance(delay, int | float)
        or not (0 <= delay < float("inf"))
    ):
        raise BadJob(f"push: delay={delay!r} is not a number of seconds >= 0")
    _check_horizon(delay, horizon)
    return now + delay if delay > 0 else 0.0


def _check_horizon(delay: float, horizon: float) -> None:
    if delay > horizon:
        raise BadJob(
            f"push: a delay of {delay:.0f} s is over MAX_DELAY ({horizon:g} s); "
            "push it nearer its time, or raise MAX_DELAY"
        )


def check_wait(wait: Any) -> float:
    """`wait` as seconds, or ValueError: a negative or non-number wait is a bug."""
    if (
        isinstance(wait, bool)
        or not isinstance(wait, int | float)
        or not (0 <= wait < float("inf"))
    ):
        raise ValueError(
            f"push: wait must be a number of seconds >= 0, got {wait!r}; "
            "0 (the default) returns a Receipt at once"
        )
    return float(wait)


def outcome_payload(found: dict[str, Any]) -> bytes:
    """A finished job's result or error (its status), as an `Outcome`'s payload."""
    if "result" in found:
        return jsonlib.dumps(found["result"]).encode()
    return str(found.get("error") or found.get("reason") or "").encode()
