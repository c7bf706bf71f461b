"""Running one handler on one job: the worker's way and the inline mode's.

`run_handler` applies what both must agree on: the result encoded as JSON
(a value that is not JSON-serialisable is a failure), the error text of a
failure cut to MAX_ERROR bytes, the time limit reported in the same words,
and the handler's `Policy`: whether a failure is retried, and after how long.
The worker interrupts a handler past its limit from its heartbeat (again at
every heartbeat until it ends); the inline mode bounds the call itself.

`JobTimeout` and `Cancelled` are `BaseException`s, as `gevent.Timeout` is: a
handler's ``except Exception:`` around its work cannot swallow them.
"""

from __future__ import annotations

import contextvars
import json
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent

from greenpipe import protocol
from greenpipe.jobs import Job
from greenpipe.values import LONGEST_DELAY, MAX_RETRIES

log = logging.getLogger(__name__)

MAX_ERROR = 4000  # bytes of a failure's error text sent back
RETRY_WITHOUT_POLICY = 3  # runs after the first that `raise Retry` gets by default


class JobTimeout(BaseException):  # noqa: N818 (the name users catch, like Timeout)
    """Thrown into a handler that ran past its time limit (JOB_TIMEOUT, `timeout=`).

    A `BaseException`: ``except Exception`` does not catch it. A handler that
    swallows it anyway gets it again at the worker's next heartbeat.
    """


class Cancelled(BaseException):  # noqa: N818
    """Thrown into a running handler whose job was cancelled (``pipe.cancel``)."""


class Retry(Exception):  # noqa: N818 (raised, like StopIteration)
    """Raise it from a handler to run the job again `after` seconds from now.

    ``raise Retry(after=30)`` honours an upstream's Retry-After; with no
    `after`, the handler's backoff decides. It counts against the handler's
    `retries` (RETRY_WITHOUT_POLICY when the handler declared none; a
    declared ``retries=0`` means none).
    """

    def __init__(self, after: float | None = None, reason: str = "") -> None:
        if after is not None and not 0 <= after < float("inf"):
            raise ValueError(f"Retry(after={after!r}): seconds >= 0, or None")
        super().__init__(reason or "retry asked by the handler")
        self.after = after


@dataclass(frozen=True, slots=True)
class Policy:
    """What a handler declared beside itself: retries, backoff, time limit.

    Exponential backoff: ``backoff`` s before the first retry, then twice as
    long each time, at most ``max_backoff``; with ``jitter`` (the default) a
    random delay between 0 and that ("full jitter"), so failures that came
    together do not retry together.
    """

    # runs after the first, at most; 0: a failure is final, `Retry` too;
    # None (not declared): a failure is final, `Retry` gets RETRY_WITHOUT_POLICY
    retries: int | None = None
    backoff: float = 1.0  # seconds before the first retry
    max_backoff: float = 300.0  # seconds, the cap
    jitter: bool = True
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    timeout: float | None = None  # seconds; None: JOB_TIMEOUT from the web

    def __post_init__(self) -> None:
        if self.retries is not None and (
            not isinstance(self.retries, int) or not 0 <= self.retries <= MAX_RETRIES
        ):
            raise ValueError(
                f"retries={self.retries!r}: a whole number >= 0, at most "
                f"{MAX_RETRIES} (a job's runs and deliveries travel in 16 bits)"
            )
        if not 0 <= self.backoff <= self.max_backoff:
            raise ValueError(
                f"backoff={self.backoff!r}, max_backoff={self.max_backoff!r}: "
                "need 0 <= backoff <= max_backoff (seconds)"
            )
        if self.max_backoff > LONGEST_DELAY:
            raise ValueError(
                f"max_backoff={self.max_backoff!r}: at most {LONGEST_DELAY:.0f} s "
                "(a year, the most MAX_DELAY may be; a retry beyond the web's "
                "MAX_DELAY is refused, not run early)"
            )
        if self.timeout is not None and not 0 < self.timeout < math.inf:
            # inf would be announced in READY, which the web refuses: a limit the
            # web's backstop can follow, or None for JOB_TIMEOUT's
            raise ValueError(
                f"timeout={self.timeout!r}: finite seconds > 0, or None (JOB_TIMEOUT)"
            )
        for kind in self.retry_on:
            if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                raise TypeError(f"retry_on: {kind!r} is not an exception class")

    def delay(self, retries: int) -> float:
        """Seconds before the retry that follows `retries` earlier ones."""
        ceiling = min(self.max_backoff, self.backoff * 2.0 ** min(retries, 60))
        return random.uniform(0.0, ceiling) if self.jitter else ceiling


NO_POLICY = Policy()


def error_text(exc: BaseException) -> bytes:
    return f"{type(exc).__name__}: {exc}".encode()[:MAX_ERROR]


def run_handler(
    handler: Callable[[Job], Any],
    job: Job,
    where: str,
    policy: Policy = NO_POLICY,
    bounded: bool = False,
) -> tuple[int, bytes]:
    """Run `handler(job)`: (a protocol result status, its payload).

    OK with the JSON result (or b""); FAILED with the error text; RETRY (with
    the delay) when `policy` retries this failure and has retries left (a
    time-out counts as a failure; `Retry` asks for one); CANCELLED when
    `Cancelled` interrupted it. `where` names the runner in the log. `bounded`:
    enforce ``job.timeout`` here with a `gevent.Timeout` (the inline mode); a
    worker interrupts its handlers itself, from its heartbeat.
    """
    timer = gevent.Timeout(job.timeout, JobTimeout) if bounded and job.timeout else None
    try:
        if timer is not None:
            timer.start()
        result = handler(job)
        # for Prefer: wait, push(wait=), and GET /jobs/<id>
        payload = b"" if result is None else json.dumps(result).encode()
        return protocol.OK, payload
    except Cancelled:
        log.warning("%s: job %s %s cancelled while it ran", where, job.id, job.name)
        return protocol.CANCELLED, b"cancelled while it ran"
    except JobTimeout as exc:
        limit = "its handler's timeout=" if policy.timeout else "JOB_TIMEOUT"
        error = f"handler exceeded {job.timeout:g} s ({limit})".encode()
        return _failed(job, where, policy, exc, error)
    except Exception as exc:
        return _failed(job, where, policy, exc, error_text(exc))
    finally:
        if timer is not None:
            timer.close()


def _failed(
    job: Job, where: str, policy: Policy, exc: BaseException, error: bytes
) -> tuple[int, bytes]:
    """FAILED, or RETRY if the policy retries `exc` and has retries left."""
    if isinstance(exc, Retry):
        budget = RETRY_WITHOUT_POLICY if policy.retries is None else policy.retries
        retry = job.retries < budget
    else:
        budget = policy.retries or 0
        retryable = isinstance(exc, policy.retry_on) or isinstance(exc, JobTimeout)
        retry = retryable and job.retries < budget
    if not retry:
        if isinstance(exc, JobTimeout):
            log.error("%s: job %s %s: %s", where, job.id, job.name, error.decode())
        else:
            log.error("%s: job %s %s failed", where, job.id, job.name, exc_info=exc)
        return protocol.FAILED, error
    after = exc.after if isinstance(exc, Retry) else None
    delay = policy.delay(job.retries) if after is None else after
    # A failure's traceback once per run, retried or not; a Retry asked for or
    # a time-out has none worth reading.
    trace = None if isinstance(exc, Retry | JobTimeout) else exc
    log.warning("%s: job %s %s: %s; retry %d of %d in %.3g s", where, job.id,
                job.name, error.decode("utf-8", "replace"), job.retries + 1,
                budget, delay, exc_info=trace)  # fmt: skip
    return protocol.RETRY, protocol.retry_payload(delay, error)


def in_app_context(handler: Callable[[Job], Any], app: Any) -> Callable[[Job], Any]:
    """`handler` run in a fresh app context of the Flask `app`, one per job.

    What a worker started with ``--app`` and the inline mode both do: the
    handler has `current_app` and a `g` of its own, and nothing of the
    caller's contexts (an empty `contextvars.Context`: an inline push from a
    view does not hand over its `request`). A registry's policies and time
    limits, names and default stay visible on the wrapper.
    """

    def run(job: Job) -> Any:
        return contextvars.Context().run(_in_context, app, handler, job)

    policy = getattr(handler, "policy", None)
    if policy is not None:
        run.policy = policy  # type: ignore[attr-defined]
        run.time_limits = getattr(handler, "time_limits", {})  # type: ignore[attr-defined]
    for attr in ("names", "has_default"):  # what READY says it runs (routing)
        if hasattr(handler, attr):
            setattr(run, attr, getattr(handler, attr))
    return run


def _in_context(app: Any, handler: Callable[[Job], Any], job: Job) -> Any:
    with app.app_context():
        return handler(job)
