"""Re-sending kept jobs (failed or dead) from the dead-letter file: one or many.

Each dead letter is re-sent at most once, whichever process sharing the file
is asked and however often: a re-send is marked in the file first
(`DeadLetters.claim_many`, one append for a chunk of marks), and only the
first standing mark submits; once its job is journaled, a second line says
so (`confirm_many`). A second request answers the first's job.

A web killed between its marks and their journal write leaves those dead
letters marked by jobs that never ran: never a second run, but not the one
asked for. ``again=True`` re-sends them: a mark never confirmed, whose job
no live process, sibling or result store knows, made more than
RESEND_AGAIN_AFTER seconds ago (no process is still submitting it: a mark is
written only once the barrier is met, and a submit then waits for nothing
but its group commit) and less than STATUS_TTL ago (a job that ran is still
in the result store), is struck and marked anew. A mark the check cannot
judge is ``in_doubt``, with why.
"""

from __future__ import annotations

import binascii
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gevent.pool

from greenpipe.deadletter import DeadLetters, Scan, envelope, job_name
from greenpipe.errors import Unavailable
from greenpipe.jobs import Envelope, issued_at
from greenpipe.journal.files import offload

CHUNK = 100  # marks written at a time: a web killed mid-way strands at most this many
TAKERS = 50  # submits at once: they share group commits
# What a record with a field missing or of the wrong kind raises as a job.
DAMAGE = (KeyError, ValueError, TypeError, AttributeError, binascii.Error)

log = logging.getLogger(__name__)


@dataclass
class Resent:
    """What a re-send did, per dead letter (its id in the dead-letter file).

    ``sent``: re-sent now, as the job named. ``already``: re-sent before (by
    any process), as the job named; nothing new. ``refused``: nothing sent,
    and why (a 503's reason, or a damaged record; ask again). ``in_doubt``:
    marked as re-sent by a job nothing knows yet, and why it is not re-sent
    now (``again``, later). ``unknown``: ids the file does not hold.
    """

    sent: dict[str, str] = field(default_factory=dict)
    already: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    in_doubt: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "already": self.already,
            "refused": self.refused,
            "in_doubt": self.in_doubt,
            "unknown": self.unknown,
        }


class Resender:
    """Re-sends kept jobs: `take` submits one with the id given; `ready` says
    whether the barrier is met (a mark is written only then)."""

    def __init__(
        self,
        dead_letters: DeadLetters,
        take: Callable[[Envelope, str], Envelope],
        new_id: Callable[[], str],
        again_after: float = 30.0,
        status_ttl: float = 300.0,
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self.redriven = 0  # kept jobs re-sent by this process (/stats)
        self.dead_letters = dead_letters
        self._take = take
        self._new_id = new_id
        self._ready = ready
        self.again_after = again_after
        self.status_ttl = status_ttl

    def redrive(self, job_id: str) -> str:
        """One kept job again (the dashboard's button): the job it was re-sent
        as, now or before, by any process sharing the file. Raises KeyError if
        the file has no such job, `Unavailable` if it was refused (nothing sent).
        """
        done = self.resend([job_id])
        if job_id in done.unknown:
            raise KeyError(job_id)
        if job_id in done.refused:
            raise Unavailable(f"dead letter {job_id}: {done.refused[job_id]}")
        return done.sent.get(job_id) or done.already[job_id]

    def resend(
        self,
        ids: Sequence[str] = (),
        name: str | None = None,
        again: bool = False,
        known: Callable[[str], bool] | None = None,
    ) -> Resent:
        """Re-send the kept jobs named by `ids`, or all named `name`, or all.

        `known(job_id)`: whether any live process or the result store knows a
        job (for ``again``; None where it cannot tell: no result store).
        Raises OSError if the file cannot be read, ValueError if `again` is
        asked where `known` cannot tell.
        """
        if again and known is None:
            raise ValueError(
                "again=True needs the result store (RESULT_STORE is off): without "
                "it a job that ran and finished cannot be told from one that "
                "never ran, and would run twice"
            )
        scan = _read(self.dead_letters)  # in the pool: a big file parses for long
        done = Resent()
        chosen = self._choose(scan, ids, name, done)
        todo, stale = [], []
        for record in chosen:
            dead = str(record["id"])
            prior = scan.claims.first(dead)
            if prior is None:
                todo.append(record)
                continue
            why = "" if not again or known is None else self._doubt(scan, dead, prior,
                                                                     known)  # fmt: skip
            if why == "lost":
                todo.append(record)
                stale.append((dead, prior))
            elif why:
                done.in_doubt[dead] = why
            else:
                done.already[dead] = prior
        if todo and not self._ready():
            why = (
                "no worker is ready yet (the barrier is not met): nothing was "
                "marked or sent; ask again once /healthz answers 200"
            )
            done.refused.update((str(record["id"]), why) for record in todo)
            return done
        if stale:
            self.dead_letters.withdraw_many(stale)
            log.warning("striking %d re-sends whose jobs never ran: %s", len(stale),
                        ", ".join(f"{d} as {j}" for d, j in stale[:10]))  # fmt: skip
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start : start + CHUNK]
            if done.refused:  # the rest were not tried: the same reason stands
                first = next(iter(done.refused.values())).removeprefix("not tried: ")
                for record in chunk:
                    done.refused[str(record["id"])] = "not tried: " + first
                continue
            self._chunk(chunk, scan, done)
        return done

    @staticmethod
    def _choose(
        scan: Scan, ids: Sequence[str], name: str | None, done: Resent
    ) -> list[dict[str, Any]]:
        if not ids:
            return [
                r for r in scan.records.values() if name is None or job_name(r) == name
            ]
        chosen = []
        for job_id in dict.fromkeys(ids):
            if job_id in scan.records:
                chosen.append(scan.records[job_id])
            else:
                done.unknown.append(job_id)
        return chosen

    def _doubt(
        self, scan: Scan, dead: str, prior: str, known: Callable[[str], bool]
    ) -> str:
        """ "" if the mark's job is known to exist, "lost" if it never ran, else
        why it cannot be told now."""
        if (dead, prior) in scan.claims.sent:
            return ""  # journaled: it exists, or it ran
        made = issued_at(prior)
        if made is None:
            return ""  # an older greenpipe's id: no time to judge by
        try:
            if known(prior):
                return ""
        except Unavailable as exc:  # a sibling cannot answer: it may hold it
            return (
                f"its job {prior} may be held by a process that does not answer ({exc})"
            )
        age = time.time() - made
        if age < self.again_after + 1:  # ids carry whole seconds
            return (
                f"its job {prior} is not known yet, marked {age:.0f} s ago: it may "
                "still be being submitted; ask again with again after "
                f"RESEND_AGAIN_AFTER ({self.again_after:g} s)"
            )
        if age > self.status_ttl:
            return (
                f"its job {prior} was marked {age:.0f} s ago, more than STATUS_TTL "
                f"({self.status_ttl:g} s): had it run, its record would have expired, "
                "so whether it ran cannot be told; it is not re-sent"
            )
        return "lost"

    def _chunk(self, records: list[dict[str, Any]], scan: Scan, done: Resent) -> None:
        jobs = []
        for record in records:
            dead = str(record["id"])
            try:
                jobs.append((dead, envelope(record)))
            except (
                KeyError,
                ValueError,
                TypeError,
                AttributeError,
                binascii.Error,
            ) as exc:
                done.refused[dead] = (
                    f"its record in {self.dead_letters.path} is damaged "
                    f"({type(exc).__name__}: {exc}); nothing was sent"
                )
        if not jobs:
            return
        pairs = [(dead, self._new_id()) for dead, _ in jobs]
        try:
            firsts = self.dead_letters.claim_many(pairs, scan)
        except OSError as exc:
            why = (
                f"cannot mark them re-sent in {self.dead_letters.path} ({exc}); "
                "nothing was sent, but some marks may stand: once the file can "
                "be written, re-send with again after RESEND_AGAIN_AFTER "
                f"({self.again_after:g} s)"
            )
            done.refused.update((dead, why) for dead, _ in pairs)
            return
        ours = []
        for (dead, job), (_, job_id) in zip(jobs, pairs, strict=True):
            if firsts[dead] == job_id:
                ours.append((dead, job, job_id))
            else:  # another process (or request) was first
                done.already[dead] = firsts[dead]
        refused: list[tuple[str, str]] = []
        sent: list[tuple[str, str]] = []

        def take(item: tuple[str, Envelope, str]) -> None:
            dead, job, job_id = item
            try:
                self._take(job, job_id)
            except Unavailable as exc:
                done.refused[dead] = str(exc)
                refused.append((dead, job_id))
            else:
                done.sent[dead] = job_id
                sent.append((dead, job_id))

        gevent.pool.Pool(TAKERS).map(take, ours)
        if refused:
            self.dead_letters.withdraw_many(refused)
        if sent:
            self.redriven += len(sent)
            self.dead_letters.confirm_many(sent)
            log.info("re-sent %d kept jobs from %s", len(sent), self.dead_letters.path)


def _read(dead_letters: DeadLetters) -> Scan:
    """`dead_letters.scan()` in gevent's thread pool; its OSError raised here."""

    def scan() -> tuple[Scan | None, OSError | None]:
        try:
            return dead_letters.scan(), None
        except OSError as exc:  # a value: raised in the pool, gevent prints it
            return None, exc

    found: Scan | None
    found, error = offload(scan)
    if error is not None:
        raise error
    assert found is not None
    return found


def chosen_ids(values: Iterable[Any]) -> list[str]:
    """`ids` as a list of str, or ValueError naming the first that is not one."""
    out = []
    for value in values:
        if not isinstance(value, str) or not value:
            raise ValueError(f"resend: ids must be job ids (str), got {value!r}")
        out.append(value)
    return out
