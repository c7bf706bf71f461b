"""Cancelling a backlog: every job of a name (or all) this process holds.

Each job is cancelled as ``pipe.cancel`` cancels one (its record journaled
before the answer, so a restart never runs it), 50 at a time so that their
records share group commits. A crash in the middle leaves each job either
cancelled for good or where it was: run the purge again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gevent.pool

from greenpipe.errors import Unavailable
from greenpipe.jobs import Status

WAITING = ("queued", "scheduled", "retrying")  # a backlog: not running yet
CANCELLERS = 50


@dataclass
class Purged:
    """What a purge did, by job id.

    ``cancelled``: will never run. ``cancelling``: running on a worker, its
    handler interrupted (only when ``in_flight`` was asked). ``started``: it
    went to a worker while the purge ran, and runs (``in_flight`` not
    asked). ``finished``: finished before its cancel (nothing changed).
    ``refused``: not cancelled, and why (a ``503``'s reason; purge again).
    """

    cancelled: list[str] = field(default_factory=list)
    cancelling: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "cancelled": self.cancelled,
            "cancelling": self.cancelling,
            "started": self.started,
            "finished": self.finished,
            "refused": self.refused,
        }


def purge(
    held: list[dict[str, Any]],
    cancel: Callable[[str], dict[str, Any] | None],
    statuses: Sequence[str],
    status: Callable[[str], dict[str, Any] | None],
) -> Purged:
    """Cancel each job of `held` (status answers) whose status is in `statuses`.

    Each is looked at again (`status`) just before its cancel, with no switch
    between: the cancels before it waited for their records, and meanwhile a
    queued job may have gone to a worker (not to be interrupted unless
    ``in_flight`` is in `statuses`).
    """
    done = Purged()

    def one(job_id: str) -> None:
        now = status(job_id)
        if now is None or Status(now["status"]).finished:
            done.finished.append(job_id)
            return
        if now["status"] not in statuses:
            done.started.append(job_id)
            return
        try:
            after = cancel(job_id)
        except Unavailable as exc:
            done.refused[job_id] = str(exc)
            return
        if after is None:  # gone meanwhile (finished and forgotten): nothing to do
            done.finished.append(job_id)
        elif after["status"] == "cancelled":
            done.cancelled.append(job_id)
        elif after.get("cancelling"):
            done.cancelling.append(job_id)
        else:
            done.finished.append(job_id)

    chosen = [job["id"] for job in held if job["status"] in statuses]
    gevent.pool.Pool(CANCELLERS).map(one, chosen)
    return done
