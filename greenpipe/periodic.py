"""Periodic jobs: a schedule (cron or every N seconds), its ticks, and which are owed.

Pure: no sockets, no clock of its own. `Periodic` is what
``@handlers.periodic`` and ``handlers.schedule`` declare, checked at
declaration; `plan` says which ticks to push now, given the last one pushed
(`greenpipe.scheduler` runs it). Cron expressions are read by croniter,
imported only when a cron schedule is declared (``pip install 'greenpipe[cron]'``).
"""

from __future__ import annotations

import json as jsonlib
import math
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, tzinfo
from typing import Any

MISSED = ("skip", "latest", "all")
MAX_CATCH_UP = 100  # missed ticks pushed at once with missed="all" (the newest)
ON_TIME_S = 60.0  # a tick pushed at most this late is on time, not missed
COUNT_LIMIT = 10_000  # missed ticks counted for the warning, at most
MAX_NAME = 255 - len("@2000-01-01T00:00:00.000000Z")  # the key is NAME@TICK
CRON_FIELDS = "minute hour day-of-month month day-of-week"
CRON_ALIASES = "@hourly, @daily, @weekly, @monthly, @yearly"


def tick_text(tick: float) -> str:
    """A tick as ISO-8601 UTC: ``2026-11-23T03:00:00Z`` (microseconds if any)."""
    moment = datetime.fromtimestamp(tick, UTC)
    spec = "microseconds" if moment.microsecond else "seconds"
    return moment.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def _croniter() -> Any:
    try:
        from croniter import croniter  # type: ignore[import-untyped]
    except ImportError:
        raise ModuleNotFoundError(
            "cron schedules need croniter, which is not installed: "
            "pip install 'greenpipe[cron]' (or every=seconds needs nothing)",
            name="croniter",
        ) from None
    return croniter


def _zone(tz: Any) -> tzinfo:
    if tz == "UTC":
        return UTC  # no time zone database needed
    if not isinstance(tz, str):
        raise ValueError(
            f"tz={tz!r}: expected an IANA time zone name (a str) such as 'UTC' or "
            "'Europe/Paris', not a tzinfo object"
        )
    try:
        return zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(
            f"tz={tz!r}: expected an IANA time zone name such as 'UTC' or "
            "'Europe/Paris' (not in the time zone database; pip install tzdata "
            "where the system has none)"
        ) from None


def _every(every: Any) -> float:
    if (
        isinstance(every, bool)
        or not isinstance(every, int | float)
        or not 0 < every < math.inf
    ):
        raise ValueError(f"every={every!r}: expected a number of seconds > 0, e.g. 60")
    return float(every)


def _name(name: Any) -> str:
    if (
        not isinstance(name, str)
        or not 1 <= len(name) <= MAX_NAME
        or not name.isascii()
        or not name.isprintable()
    ):
        raise ValueError(
            f"name={name!r}: a periodic job's name must be 1-{MAX_NAME} printable "
            "ASCII characters (its idempotency key is NAME@TICK)"
        )
    return name


@dataclass(frozen=True, slots=True)
class Periodic:
    """One periodic job: its name, when it ticks, its JSON, its missed-tick policy.

    Ticks of ``every`` are the multiples of `every` seconds since the Unix
    epoch (a restart keeps the same grid; the zone plays no part). Ticks of
    ``cron`` are read in the zone `tz`, as cron does: a time skipped by a
    change to summer time runs just after the change; a time repeated by the
    change back runs once, unless the expression's minute or hour is ``*``
    (then each real hour runs).
    """

    name: str
    cron: str | None = None
    every: float | None = None
    json: Any = None
    tz: str = "UTC"
    missed: str = "skip"
    _zone: tzinfo = field(default=UTC, repr=False, compare=False)
    _wildcard: bool = field(default=False, repr=False, compare=False)

    @classmethod
    def declare(
        cls,
        name: str,
        cron: str | None = None,
        every: float | None = None,
        json: Any = None,
        tz: str = "UTC",
        missed: str = "skip",
    ) -> Periodic:
        """A checked `Periodic`, or ValueError naming the value and what is expected.

        `name` may be "" (a decorator's, filled in by `named`).
        """
        if name:
            _name(name)
        if (cron is None) == (every is None):
            given = "both" if cron is not None else "neither"
            raise ValueError(
                f"periodic: give a cron expression such as '*/5 * * * *' or "
                f"every=seconds, one of them; got {given} (cron={cron!r}, "
                f"every={every!r})"
            )
        if missed not in MISSED:
            raise ValueError(
                f"missed={missed!r}: expected one of 'skip' (the default), 'latest' "
                "or 'all'"
            )
        try:
            jsonlib.dumps(json)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"json={json!r}: not JSON-serialisable ({exc})") from None
        zone = _zone(tz)
        if every is not None:
            if tz != "UTC":
                raise ValueError(
                    f"tz={tz!r} with every=: every= ticks are multiples of every "
                    "seconds since the Unix epoch, in no zone; for a time of day "
                    "in a zone, give a cron expression with tz="
                )
            return cls(name, None, _every(every), json, tz, missed, zone)
        if not isinstance(cron, str):
            hint = ""
            if callable(cron):
                hint = "; write @handlers.periodic(...) with its parentheses"
            elif isinstance(cron, int | float):
                hint = f"; for every {cron} s, write every={cron}"
            raise ValueError(f"cron={cron!r}: expected a cron expression (a str){hint}")
        expression = " ".join(cron.split())
        croniter = _croniter()
        reason = f"{len(expression.split())} fields"
        if len(expression.split()) == 5 or expression.startswith("@"):
            try:
                expanded = croniter(expression).expanded
            except (ValueError, KeyError) as exc:  # CroniterError is a ValueError
                reason = str(exc)
            else:
                wildcard = expanded[0] == ["*"] or expanded[1] == ["*"]
                return cls(name, expression, None, json, tz, missed, zone, wildcard)
        raise ValueError(
            f"cron={cron!r}: expected a cron expression of 5 fields ({CRON_FIELDS}), "
            f"e.g. '*/5 * * * *', or one of {CRON_ALIASES} ({reason})"
        )

    def named(self, name: str) -> Periodic:
        """The same schedule for the job `name` (checked)."""
        return replace(self, name=_name(name))

    def key(self, tick: float) -> str:
        """The idempotency key of `tick`: ``NAME@2026-11-23T03:00:00Z``."""
        return f"{self.name}@{tick_text(tick)}"

    def describe(self) -> str:
        """How it ticks, in a few words: ``every 60 s`` or ``cron '0 3 * * *' UTC``."""
        if self.every is not None:
            return f"every {self.every:g} s"
        return f"cron {self.cron!r} {self.tz}"

    def next_after(self, moment: float) -> float:
        """The first tick strictly after `moment` (Unix seconds)."""
        if self.every is not None:
            return (math.floor(moment / self.every) + 1) * self.every
        ticks = _croniter()(self.cron, datetime.fromtimestamp(moment, self._zone))
        while True:
            tick = float(ticks.get_next(float))
            if self._kept(tick):
                return tick

    def back_from(self, now: float) -> Iterator[float]:
        """The ticks at or before `now`, newest first (without end)."""
        if self.every is not None:
            index = math.floor(now / self.every)
            while True:
                yield index * self.every
                index -= 1
        # Cron ticks fall on whole seconds: those before floor(now) + 1 are <= now.
        start = datetime.fromtimestamp(math.floor(now) + 1, self._zone)
        ticks = _croniter()(self.cron, start)
        while True:
            tick = float(ticks.get_prev(float))
            if self._kept(tick):
                yield tick

    def _kept(self, tick: float) -> bool:
        """False for the second run of a wall time repeated by a change back."""
        if self._wildcard:
            return True
        local = datetime.fromtimestamp(tick, self._zone)
        return not (
            local.fold and local.utcoffset() != local.replace(fold=0).utcoffset()
        )


@dataclass(frozen=True, slots=True)
class Plan:
    """What `plan` decided: the ticks to push now, and the missed ones not pushed."""

    push: list[float]  # oldest first
    skipped: int = 0  # missed ticks not pushed (counted up to COUNT_LIMIT)
    first_skipped: float = 0.0  # the oldest of those counted, and the newest
    last_skipped: float = 0.0
    more: bool = False  # more than COUNT_LIMIT were due: `skipped` is a floor


def plan(periodic: Periodic, last: float, now: float) -> Plan:
    """The ticks of `periodic` to push at `now`, the last one pushed being `last`.

    Due are the ticks after `last`, up to `now`. The newest is on time if it
    is at most ON_TIME_S old (a restart, a slow push): it is pushed. The
    others are missed (the scheduler was down, or stalled): ``skip`` pushes
    none of them, ``latest`` the newest, ``all`` each of them, the newest
    MAX_CATCH_UP at most, oldest first.
    """
    due: list[float] = []  # newest first
    for tick in periodic.back_from(now):
        if tick <= last or len(due) > COUNT_LIMIT:
            break
        due.append(tick)
    on_time = due[:1] if due and now - due[0] <= ON_TIME_S else []
    missed = due[len(on_time) :]
    keep = {"skip": 0, "latest": 1, "all": MAX_CATCH_UP}[periodic.missed]
    pushed, skipped = missed[:keep], missed[keep:]
    return Plan(
        sorted(on_time + pushed),
        len(skipped),
        skipped[-1] if skipped else 0.0,
        skipped[0] if skipped else 0.0,
        len(due) > COUNT_LIMIT,
    )
