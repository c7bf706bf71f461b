"""Handlers a worker runs: the `Handlers` registry by job name, and the stock ones.

HANDLER is ``package.module:NAME``: a `Handlers` registry (the handler chosen
by ``job.name``) or any callable taking a `greenpipe.jobs.Job`, such as the
stock ``greenpipe.handlers:log_job`` (the default), ``noop`` and ``echo``. A
handler runs in a greenlet of the worker's pool, so it should block only
cooperatively (gevent patched I/O, gevent.sleep). What it returns travels back
in the acknowledgement (as JSON) when a client waits with ``Prefer: wait=N``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from greenpipe.errors import GreenpipeError
from greenpipe.handling import NO_POLICY, Policy
from greenpipe.jobs import Handler, Job
from greenpipe.periodic import Periodic
from greenpipe.protocol import MAX_JOB_NAME

log = logging.getLogger("greenpipe.jobs")

F = TypeVar("F", bound=Handler)


class UnknownJob(GreenpipeError):
    """A job whose name no handler of the registry knows (reported as failed)."""


class Handlers:
    """Handlers by job name; the worker runs ``handlers(job)``.

        handlers = Handlers()

        @handlers.job("welcome_email")
        def welcome_email(job):
            send_mail(job.json()["email"])

    Run it with ``server.py --handler myapp.jobs:handlers``. A forwarded
    request is named by its path ("/" or "/jobs" from web.py; ``pipe.forward``
    names it as told: ``@handlers.job("/resize")``). A job whose
    name is not registered goes to the default handler if there is one, else
    it fails with `UnknownJob` naming the names known: reported to the web as
    a failure, never retried, never dropped silently.

    Periodic jobs are declared here too (`periodic`, `schedule`) and pushed
    once per tick by ``greenpipe schedule --handler myapp.jobs:handlers``.
    """

    def __init__(self, default: Handler | None = None) -> None:
        self._by_name: dict[str, Handler] = {}
        self._policies: dict[str, Policy] = {}
        self._schedules: dict[str, Periodic] = {}
        self._default = default

    def job(
        self,
        name: str,
        *,
        retries: int | None = None,
        backoff: float | None = None,
        max_backoff: float | None = None,
        jitter: bool | None = None,
        retry_on: tuple[type[BaseException], ...] | None = None,
        timeout: float | None = None,
    ) -> Callable[[F], F]:
        """Register the decorated function for jobs named `name`; returns it as is.

        `retries`: a failure (an exception in `retry_on`, or the time limit)
        runs the job again, up to that many times, after `backoff` s, then
        twice as long each time up to `max_backoff`, at random below that
        with `jitter`; the web holds the job meanwhile (journaled). The last
        failure goes to the dead-letter file. `timeout` (seconds) replaces
        JOB_TIMEOUT for this handler. A keyword left out takes `Policy`'s
        default; one given, whatever its value (``retries=0`` too), makes
        the policy the handler's own: the worker's RETRIES no longer apply.
        Raises ValueError/TypeError for values that make no sense.
        """
        if not isinstance(name, str):  # @handlers.job without (name): Celery's habit
            raise TypeError(
                f"@handlers.job needs the job's name: @handlers.job({name.__name__!r})"
                " (the name pushes use), not a bare @handlers.job"
                if callable(name)
                else f"handlers.job: the job's name is a str, got {name!r}"
            )
        given = (retries, backoff, max_backoff, jitter, retry_on, timeout)
        declared = any(value is not None for value in given)
        policy = Policy(
            retries,
            NO_POLICY.backoff if backoff is None else backoff,
            NO_POLICY.max_backoff if max_backoff is None else max_backoff,
            NO_POLICY.jitter if jitter is None else jitter,
            NO_POLICY.retry_on if retry_on is None else tuple(retry_on),
            timeout,
        )

        def register(function: F) -> F:
            self.add(name, function)
            if declared:  # not `policy != NO_POLICY`: retries=0 equals it
                self._policies[name] = policy
            return function

        return register

    def periodic(
        self,
        cron: str | None = None,
        *,
        every: float | None = None,
        name: str | None = None,
        json: Any = None,
        tz: str = "UTC",
        missed: str = "skip",
        **policy: Any,
    ) -> Callable[[F], F]:
        """Register the decorated function as `job` does, and run it once per tick.

            @handlers.periodic("0 3 * * *", tz="Europe/Paris")
            def nightly_report(job): ...

            @handlers.periodic(every=30, json={"queue": "mail"})
            def poll_inbox(job): ...

        `cron`: a 5-field cron expression read in the zone `tz` (an IANA
        name); or `every` seconds, ticks at multiples of it since the Unix
        epoch. The job is named `name` (default: the function's name) and
        carries `json`. `missed`: what a scheduler that was down does with
        the ticks it missed: "skip" them, run the "latest" once, or "all"
        (at most `greenpipe.periodic.MAX_CATCH_UP`). `policy`: the retry and
        time limit keywords of `job` (retries=, backoff=, timeout=, ...).
        Raises ValueError (TypeError for an unknown keyword) at once.
        """
        when = Periodic.declare(name or "", cron, every, json, tz, missed)
        Policy(**policy)  # `job` checks them again when decorating: the same rules

        def register(function: F) -> F:
            named = when.named(name or function.__name__)
            self._check_schedule(named.name)
            self.job(named.name, **policy)(function)
            self._schedules[named.name] = named
            return function

        return register

    def schedule(
        self,
        name: str,
        cron: str | None = None,
        *,
        every: float | None = None,
        json: Any = None,
        tz: str = "UTC",
        missed: str = "skip",
    ) -> Periodic:
        """Run the job `name` once per tick, its handler registered elsewhere.

        ``handlers.schedule("/cleanup", "*/15 * * * *")``: as `periodic`
        without registering a handler (another registry, another worker, a
        forwarded path). Returns the checked `Periodic`; ValueError at once.
        """
        when = Periodic.declare(name, cron, every, json, tz, missed).named(name)
        self._check_schedule(name)
        self._schedules[name] = when
        return when

    def _check_schedule(self, name: str) -> None:
        known = self._schedules.get(name)
        if known is not None:
            raise ValueError(
                f"job {name!r} already has a schedule ({known.describe()}); "
                "one schedule per job name"
            )

    @property
    def schedules(self) -> list[Periodic]:
        """The periodic jobs declared, in the order of declaration."""
        return list(self._schedules.values())

    def policy(self, name: str) -> Policy:
        """The `Policy` of the handler that runs jobs named `name`."""
        return self._policies.get(name, NO_POLICY)

    @property
    def time_limits(self) -> dict[str, float]:
        """The handlers' own time limits (``timeout=``), by job name, in seconds.

        A worker announces them in READY: the web's backstop for a job follows
        its handler's limit, not JOB_TIMEOUT.
        """
        return {name: policy.timeout for name, policy in self._policies.items()
                if policy.timeout is not None}  # fmt: skip

    def add(self, name: str, function: Handler) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a job name must be a non-empty str, got {name!r}")
        try:
            size = len(name.encode("utf-8"))
        except UnicodeEncodeError as exc:  # a lone surrogate: READY cannot say it
            raise ValueError(
                f"job name {name!r} is not valid UTF-8 text ({exc.reason} at "
                f"{exc.start}): name the job with text a push can carry"
            ) from None
        if size > MAX_JOB_NAME:  # push refuses it; READY could not announce it
            raise ValueError(
                f"job name {name[:40]!r}... is {size} bytes of UTF-8; a job name is "
                f"at most {MAX_JOB_NAME} (what push accepts): choose a shorter one"
            )
        if name in self._by_name:
            raise ValueError(
                f"job {name!r} already has a handler "
                f"({self._by_name[name].__qualname__}); one handler per name"
            )
        if not callable(function):
            raise TypeError(f"the handler for {name!r} must be callable")
        self._by_name[name] = function

    def default(self, function: F) -> F:
        """Register the decorated function for every job no other handler takes."""
        self._default = function
        return function

    @property
    def has_default(self) -> bool:
        """True if a default handler takes the jobs no other handler takes."""
        return self._default is not None

    @property
    def names(self) -> list[str]:
        return sorted(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __call__(self, job: Job) -> Any:
        handler = self._by_name.get(job.name, self._default)
        if handler is None:
            known = ", ".join(repr(n) for n in self.names) or "none"
            raise UnknownJob(
                f"no handler for job name {job.name!r}; this worker knows {known}. "
                "Register it with @handlers.job(name), or add a default handler"
            )
        return handler(job)

    def __repr__(self) -> str:
        return f"<Handlers {self.names}{' + default' if self._default else ''}>"


# -- the stock handlers ---------------------------------------------------------


def log_job(job: Job) -> None:
    """The default: one log line per job, to watch the messages flow in the console.

    The worker's log names its port; silence this with LOG_LEVEL=WARNING, or use
    ``greenpipe.handlers:noop``.
    """
    if job.method:  # a forwarded request: named by its path
        what = f"{job.method} {job.path}{'?' if job.query else ''}{job.query}"
    else:  # pushed by name
        what = job.name
    log.info("%s: job %s attempt %d: %s (%d bytes)", job.worker, job.id,
             job.attempt, what, len(job.body))  # fmt: skip


def noop(job: Job) -> None:
    """Do nothing: for benchmarks and quiet runs."""


def echo(job: Job) -> dict[str, Any]:
    """Return what arrived; handy with ``Prefer: wait=5`` to see the round trip."""
    return {
        "id": job.id,
        "attempt": job.attempt,
        "method": job.method,
        "path": job.path,
        "query": job.query,
        "content_type": job.content_type,
        "body": job.body.decode("utf-8", "replace"),
    }
