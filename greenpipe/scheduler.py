"""greenpipe schedule: pushes each periodic job once per tick, through its own Pipe.

One scheduler per set of workers: it takes an exclusive flock on
JOURNAL_DIR/scheduler.lock before its pipe opens its journal there, and a
second one on the same directory exits 1 naming the pid that holds it. The
last tick pushed per job is kept in JOURNAL_DIR/schedule-state.json
(rewritten atomically), so the ticks missed while it was down are known;
each tick is pushed with the idempotency key NAME@TICK, so a restart never
makes two jobs of one tick.
"""

from __future__ import annotations

import json as jsonlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import gevent

from greenpipe import entry, values
from greenpipe.config import (
    PipeSettings,
    check_pipe,
    load_settings,
    setting,
)
from greenpipe.errors import ConfigError, GreenpipeError, Unavailable
from greenpipe.handlers import Handlers
from greenpipe.journal.files import lock_file, replace_file
from greenpipe.periodic import Periodic, plan, tick_text
from greenpipe.throttle import Throttle

if TYPE_CHECKING:
    from greenpipe.pipe import Pipe

log = logging.getLogger(__name__)

LOCK_FILE = "scheduler.lock"
STATE_FILE = "schedule-state.json"
SCHEDULED = "s"  # before the prefix of the ids of the jobs a scheduler pushes
RETRY_S = 1.0  # after a push refused (no worker, the journal), look again
STOP_PUSH_S = 1.0  # a push in progress at SIGTERM gets this long to finish


@dataclass(frozen=True, slots=True)
class ScheduleSettings(PipeSettings):
    """The scheduler's settings: a pipe's, its handlers, a journal of its own."""

    handler: str = setting(
        "",
        values.optional_spec,
        "package.module:NAME, the Handlers registry whose periodic jobs to push "
        "(required)",
        "none",
    )
    journal_dir: str = setting(
        ".greenpipe-schedule",
        values.journal_dir,
        "directory of the scheduler's lock, last ticks and journal; not the web's",
    )
    # A pipe's settings about HTTP: the scheduler serves none.
    metrics: bool = setting(False, values.flag, "unused: the scheduler serves no HTTP")
    dashboard: bool = setting(
        False, values.flag, "unused: the scheduler serves no HTTP"
    )
    reuse_port: bool = setting(
        False, values.flag, "unused: the scheduler binds no port"
    )


def load_schedule(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] = os.environ,
    prog: str | None = None,
) -> ScheduleSettings:
    """Resolve the scheduler's settings: flags, then environment, then defaults."""
    description = (
        "greenpipe schedule: pushes each periodic job of HANDLER once per tick, "
        "to the WORKERS (the one scheduler of a set of workers)."
    )
    settings = check_pipe(
        load_settings(ScheduleSettings, prog, description, argv, environ)
    )
    if not settings.handler:
        raise ConfigError(
            "HANDLER: expected the Handlers registry that declares the periodic "
            "jobs, e.g. --handler myapp.jobs:handlers; got none"
        )
    if settings.journal_dir == "off":
        raise ConfigError(
            "JOURNAL_DIR: expected a directory (the scheduler keeps its lock, its "
            "last ticks and its journal there), got 'off'; give one, e.g. "
            ".greenpipe-schedule"
        )
    return settings


def load_schedules(spec: str) -> list[Periodic]:
    """The periodic jobs of the registry `spec` names, or ConfigError saying why not."""
    from greenpipe.worker import load_handler

    registry = load_handler(spec)
    schedules = getattr(registry, "schedules", None)
    if not isinstance(registry, Handlers) or schedules is None:
        raise ConfigError(
            f"HANDLER: {spec!r} is a {type(registry).__name__}, not a Handlers "
            "registry; give the registry that declares the periodic jobs"
        )
    if not schedules:
        raise ConfigError(
            f"HANDLER: {spec!r} declares no periodic jobs; declare them with "
            "@handlers.periodic(...) or handlers.schedule(...)"
        )
    for periodic in schedules:
        if periodic.name not in registry and not registry.has_default:
            log.warning(
                "schedule: %r has no handler in %s: the workers must run a "
                "registry that has one, or each of its ticks fails (UnknownJob)",
                periodic.name, spec,
            )  # fmt: skip
    return list(schedules)


class SchedulerBusy(GreenpipeError):
    """Another scheduler holds this journal directory's lock (exit code 1)."""


def take_lock(directory: str) -> int:
    """The scheduler's lock in `directory` (its fd), or `SchedulerBusy` naming who."""
    path = os.path.join(directory, LOCK_FILE)
    fd = lock_file(path)
    if fd < 0:
        try:
            with open(path, encoding="ascii", errors="replace") as file:
                holder = f"pid {file.read().strip() or 'unknown'}"
        except OSError:
            holder = "pid unknown"
        raise SchedulerBusy(
            f"schedule: another scheduler holds {path} ({holder}); run one "
            "scheduler per set of workers: stop that one first, or give this "
            "one a JOURNAL_DIR of its own if it feeds other workers"
        )
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _tick(value: Any) -> float | None:
    return None if value is None else float(value)


class State:
    """Per job: the last tick pushed (or when it was first seen), and the one
    being pushed, if any. One small JSON file, replaced whole at each change."""

    def __init__(self, directory: str, sync: bool = False) -> None:
        self.path = os.path.join(directory, STATE_FILE)
        self.sync = sync
        self.jobs: dict[str, dict[str, Any]] = {}

    def load(self) -> None:
        try:
            with open(self.path, encoding="utf-8") as file:
                data = jsonlib.load(file)
            self.jobs = {
                name: {"last": float(entry["last"]), "pushing": _tick(entry["pushing"])}
                for name, entry in data["jobs"].items()
            }
        except FileNotFoundError:
            self.jobs = {}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise GreenpipeError(
                f"schedule: {self.path} cannot be read ({exc!r}); move it aside to "
                "start afresh (the ticks missed meanwhile are then not known)"
            ) from None

    def last(self, name: str) -> float:
        return float(self.jobs[name]["last"])

    def pushing(self, name: str) -> float | None:
        return self.jobs[name].get("pushing")

    def set(self, name: str, last: float, pushing: float | None = None) -> None:
        self.jobs[name] = {"last": last, "pushing": pushing}

    def save(self) -> None:
        jobs = {name: {**entry, "tick": tick_text(entry["last"])}
                for name, entry in self.jobs.items()}  # fmt: skip
        data = jsonlib.dumps({"version": 1, "jobs": jobs}, indent=1) + "\n"
        replace_file(self.path, data.encode(), self.sync)


# push(periodic, tick) -> (job id, True if this process made the job); raises
# Unavailable when it cannot be taken now, ValueError when it never can.
Push = Callable[[Periodic, float], tuple[str, bool]]


class Scheduler:
    """Which ticks are due, pushed in order, the state kept: no sockets of its own.

    `begin` once, then `run_due` whenever its answer (a wall time) comes.
    `clock` is the wall clock (injected by tests); `ttl` is IDEMPOTENCY_TTL.
    """

    def __init__(
        self,
        schedules: Sequence[Periodic],
        state: State,
        push: Push,
        ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.schedules = list(schedules)
        self.state = state
        self.push = push
        self.ttl = ttl
        self.clock = clock
        self.pushed = 0  # ticks pushed as new jobs
        self.again = 0  # ticks whose key answered a job pushed before a restart
        self.skipped = 0  # missed ticks not pushed
        self._throttle = Throttle(log, 10.0)

    def begin(self) -> list[tuple[Periodic, float]]:
        """Jobs seen for the first time start now (nothing missed); each job's
        next tick. The state keeps only the jobs declared."""
        now = self.clock()
        known = self.state.jobs
        self.state.jobs = {p.name: known.get(p.name) or {"last": now, "pushing": None}
                           for p in self.schedules}  # fmt: skip
        self.state.save()
        return [(p, p.next_after(max(now, self.state.last(p.name))))
                for p in self.schedules]  # fmt: skip

    def run_due(self) -> float:
        """Push every tick due now, job by job; the wall time to look again."""
        now = self.clock()
        wake = now + 3600.0
        for periodic in self.schedules:
            if self._run(periodic, now):
                last = self.state.last(periodic.name)
                wake = min(wake, periodic.next_after(max(now, last)))
            else:
                wake = min(wake, now + RETRY_S)
        return wake

    def _run(self, periodic: Periodic, now: float) -> bool:
        """Push what `periodic` owes now; False if a push was refused (retry soon)."""
        name, state = periodic.name, self.state
        doubt = state.pushing(name)
        decided = plan(periodic, state.last(name), now)
        if decided.skipped:
            self.skipped += decided.skipped
            log.warning(
                "schedule: %s: skipped %s%d missed %s (%s to %s; missed=%r)",
                name, "at least " if decided.more else "", decided.skipped,
                "tick" if decided.skipped == 1 else "ticks",
                tick_text(decided.first_skipped), tick_text(decided.last_skipped),
                periodic.missed,
            )  # fmt: skip
            state.set(name, decided.last_skipped)
            state.save()
        for tick in decided.push:
            if tick == doubt and now - tick >= self.ttl:
                # Maybe pushed just before the scheduler stopped; its key may be
                # forgotten by now, so pushing it again might make a second job.
                log.warning(
                    "schedule: %s: tick %s was being pushed when the scheduler "
                    "stopped, over IDEMPOTENCY_TTL (%g s) ago: not pushed again "
                    "(it may have run; raise IDEMPOTENCY_TTL to cover a longer "
                    "downtime)", name, tick_text(tick), self.ttl,
                )  # fmt: skip
            elif not self._push(periodic, tick):
                return False
            state.set(name, tick)
            state.save()
        return True

    def _push(self, periodic: Periodic, tick: float) -> bool:
        """Push one tick, in doubt meanwhile; False if refused for now."""
        name = periodic.name
        self.state.set(name, self.state.last(name), tick)
        self.state.save()  # before the push: after a crash, this tick is in doubt
        try:
            job_id, fresh = self.push(periodic, tick)
        except Unavailable as exc:
            self._throttle.warning(
                f"refused {name}", "schedule: %s: tick %s not pushed (%s); "
                "trying again in %g s with the newest tick due then (older ones "
                "follow missed=%r)", name, tick_text(tick), exc, RETRY_S,
                periodic.missed,
            )  # fmt: skip
            return False
        except ValueError as exc:  # its JSON over MAX_BODY: never pushable
            log.error("schedule: %s: tick %s cannot be pushed: %s", name,
                      tick_text(tick), exc)  # fmt: skip
            return True
        self.pushed += fresh
        self.again += not fresh
        again = "" if fresh else " (pushed before a restart: the same job)"
        log.debug("schedule: %s: job %s%s", periodic.key(tick), job_id, again)
        return True


def run(settings: ScheduleSettings) -> int:
    """Push each tick of the handlers' periodic jobs until SIGTERM/SIGINT; exit 0."""
    from greenpipe.pipe import Pipe  # sockets and gevent: only in the command

    schedules = load_schedules(settings.handler)
    os.makedirs(settings.journal_dir, exist_ok=True)
    lock = take_lock(settings.journal_dir)  # before the pipe opens its journal
    try:
        state = State(settings.journal_dir, settings.journal_sync == "batch")
        state.load()
        # REUSE_PORT or DASHBOARD in an environment shared with the webs: unused.
        pipe = Pipe(replace(settings, reuse_port=False, dashboard=False))
        # Its ids say a scheduler made them: a web sharing the result store
        # answers one it does not know 404 (found once finished), never 410.
        admission = pipe.dispatcher.admission
        admission.prefix = SCHEDULED + admission.prefix
        pipe.name = f"scheduler pid {os.getpid()}"
        pipe.start()

        def push(periodic: Periodic, tick: float) -> tuple[str, bool]:
            key = periodic.key(tick)
            receipt = pipe.push(periodic.name, json=periodic.json, idempotency_key=key)
            return receipt.id, pipe.owns(receipt.id)

        scheduler = Scheduler(schedules, state, push, settings.idempotency_ttl)
        return _serve(scheduler, pipe, settings)
    finally:
        os.close(lock)


def _serve(scheduler: Scheduler, pipe: Pipe, settings: ScheduleSettings) -> int:
    stopping = entry.stop_signals("schedule")
    upcoming = scheduler.begin()
    workers = pipe.workers()
    log.info(
        "schedule: pid %d pushing %d periodic %s to %s (journal %s): %s",
        os.getpid(), len(upcoming), "job" if len(upcoming) == 1 else "jobs",
        ", ".join(workers), settings.journal_dir,
        "; ".join(f"{p.name} {p.describe()}, missed={p.missed}, next {tick_text(t)}"
                  for p, t in upcoming),
    )  # fmt: skip

    def ticking() -> None:
        while not stopping.wait(max(0.0, scheduler.run_due() - time.time())):
            pass

    ticker = gevent.spawn(ticking)
    ticker.link(lambda _: stopping.set())  # a bug in it stops us too (raised below)
    stopping.wait()
    # A push still waiting (for the barrier, say) is cut short: its tick stays
    # "pushing" in the state, and the next start pushes it with the same key.
    ticker.join(STOP_PUSH_S)
    ticker.kill()
    if ticker.exception is not None and not isinstance(
        ticker.exception, gevent.GreenletExit
    ):
        raise ticker.exception
    log.info("schedule: stopping; waiting for acknowledgements")
    owed = pipe.drain(settings.drain_timeout)
    pipe.close()
    log.info(
        "schedule: stopped; pushed %d ticks, %d again after a restart (the same "
        "jobs), skipped %d missed; %d not acknowledged yet (in the journal)",
        scheduler.pushed, scheduler.again, scheduler.skipped, owed,
    )  # fmt: skip
    return 0
