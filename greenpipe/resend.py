"""Re-sending kept jobs (failed or dead) from the dead-letter file: one or many.

Each dead letter is re-sent at most once, whichever process sharing the file
is asked and however often: a re-send is claimed in the file first
(`DeadLetters.claim_many`, one append for a chunk of claims), and only the
first standing claim submits. A second request answers the first's job.

A web killed between its claims and their group commit leaves those dead
letters claimed by jobs that never ran: never a second run, but not the one
asked for. ``again=True`` re-sends them: a claim whose job no live process,
sibling or result store knows, and whose id was made more than
RESEND_AGAIN_AFTER seconds ago (no process is still submitting it), is struck
and claimed anew.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gevent.pool

from greenpipe.deadletter import DeadLetters, envelope, job_name
from greenpipe.errors import Unavailable
from greenpipe.jobs import Envelope, issued_at

CHUNK = 100  # claims written at a time: a web killed mid-way strands at most this many
TAKERS = 50  # submits at once: they share group commits

log = logging.getLogger(__name__)


@dataclass
class Resent:
    """What a re-send did, per dead letter (its id in the dead-letter file).

    ``sent``: re-sent now, as the job named. ``already``: re-sent before (by
    any process), as the job named; nothing new. ``refused``: nothing sent,
    and why (a 503's reason; ask again). ``unknown``: ids the file does not
    hold.
    """

    sent: dict[str, str] = field(default_factory=dict)
    already: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "already": self.already,
            "refused": self.refused,
            "unknown": self.unknown,
        }


class Resender:
    """Re-sends kept jobs: `take` submits one with the id given.

    `known(job_id)` says whether any live process or the result store knows
    a job (for ``again``); None where it cannot tell (no result store).
    """

    def __init__(
        self,
        dead_letters: DeadLetters,
        take: Callable[[Envelope, str], Envelope],
        new_id: Callable[[], str],
        again_after: float = 30.0,
    ) -> None:
        self.dead_letters = dead_letters
        self._take = take
        self._new_id = new_id
        self.again_after = again_after

    def resend(
        self,
        ids: Sequence[str] = (),
        name: str | None = None,
        again: bool = False,
        known: Callable[[str], bool] | None = None,
    ) -> Resent:
        """Re-send the kept jobs named by `ids`, or all named `name`, or all.

        Raises OSError if the file cannot be read, ValueError if `again` is
        asked where `known` cannot tell (no result store).
        """
        if again and known is None:
            raise ValueError(
                "again=True needs the result store (RESULT_STORE is off): without "
                "it a job that ran and finished cannot be told from one that "
                "never ran, and would run twice"
            )
        records, claims = self.dead_letters.read()
        done = Resent()
        if ids:
            chosen = []
            for job_id in dict.fromkeys(ids):
                if job_id in records:
                    chosen.append(records[job_id])
                else:
                    done.unknown.append(job_id)
        else:
            chosen = [
                record
                for record in records.values()
                if name is None or job_name(record) == name
            ]
        todo, stale = [], []
        for record in chosen:
            dead = str(record["id"])
            prior = claims.first(dead)
            if prior is None:
                todo.append(record)
            elif again and known is not None and self._lost(prior, known):
                todo.append(record)
                stale.append((dead, prior))
            else:
                done.already[dead] = prior
        if stale:
            self.dead_letters.withdraw_many(stale)
            log.warning("striking %d re-sends whose jobs never ran: %s", len(stale),
                        ", ".join(f"{d} as {j}" for d, j in stale[:10]))  # fmt: skip
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start : start + CHUNK]
            if done.refused:  # the rest were not tried: the same reason stands
                for record in chunk:
                    done.refused[str(record["id"])] = "not tried: " + next(
                        iter(done.refused.values())
                    ).removeprefix("not tried: ")
                continue
            self._chunk(chunk, done)
        return done

    def _lost(self, prior: str, known: Callable[[str], bool]) -> bool:
        """Whether the job a claim names never ran: old enough, known nowhere."""
        made = issued_at(prior)
        if made is None or time.time() - (made + 1) < self.again_after:  # ids: whole s
            return False
        try:
            return not known(prior)
        except Unavailable:  # a sibling cannot answer: it may hold it
            return False

    def _chunk(self, records: list[dict[str, Any]], done: Resent) -> None:
        pairs = [(str(record["id"]), self._new_id()) for record in records]
        try:
            firsts = self.dead_letters.claim_many(pairs)
        except OSError as exc:
            why = f"cannot mark them re-sent in {self.dead_letters.path} ({exc})"
            done.refused.update((dead, why) for dead, _ in pairs)
            return
        ours = []
        for record, (dead, job_id) in zip(records, pairs, strict=True):
            if firsts[dead] == job_id:
                ours.append((record, dead, job_id))
            else:  # another process (or request) was first
                done.already[dead] = firsts[dead]
        refused: list[tuple[str, str]] = []

        def take(item: tuple[dict[str, Any], str, str]) -> None:
            record, dead, job_id = item
            try:
                self._take(envelope(record), job_id)
            except Unavailable as exc:
                done.refused[dead] = str(exc)
                refused.append((dead, job_id))
            else:
                done.sent[dead] = job_id

        gevent.pool.Pool(TAKERS).map(take, ours)
        if refused:
            self.dead_letters.withdraw_many(refused)
        if done.sent:
            log.warning("re-sent %d kept jobs from %s", len(ours) - len(refused),
                        self.dead_letters.path)  # fmt: skip


def chosen_ids(values: Iterable[Any]) -> list[str]:
    """`ids` as a list of str, or ValueError naming the first that is not one."""
    out = []
    for value in values:
        if not isinstance(value, str) or not value:
            raise ValueError(f"resend: ids must be job ids (str), got {value!r}")
        out.append(value)
    return out
