"""Running one handler on one job: the worker's way and the inline mode's.

`run_handler` applies what both must agree on: the result encoded as JSON
(a value that is not JSON-serialisable is a failure), the error text of a
failure cut to MAX_ERROR bytes, and the time limit reported in the same
words. The worker interrupts a handler past its limit from its heartbeat;
the inline mode bounds the call itself.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import gevent

from greenpipe import protocol
from greenpipe.jobs import Job

log = logging.getLogger(__name__)

MAX_ERROR = 4000  # bytes of a failure's error text sent back


class JobTimeout(Exception):
    """Thrown into a handler that ran past its job's time limit (JOB_TIMEOUT)."""


def error_text(exc: BaseException) -> bytes:
    return f"{type(exc).__name__}: {exc}".encode()[:MAX_ERROR]


def run_handler(
    handler: Callable[[Job], Any], job: Job, where: str, bounded: bool = False
) -> tuple[int, bytes]:
    """Run `handler(job)`: (protocol.OK, JSON result or b"") or (FAILED, error).

    `where` names the runner in the log ("worker :4444"). `bounded`: enforce
    ``job.timeout`` here with a `gevent.Timeout` (the inline mode); a worker
    interrupts its handlers itself, from its heartbeat.
    """
    timer = gevent.Timeout(job.timeout, JobTimeout) if bounded and job.timeout else None
    try:
        if timer is not None:
            timer.start()
        result = handler(job)
        # for Prefer: wait, push(wait=), and GET /jobs/<id>
        payload = b"" if result is None else json.dumps(result).encode()
        return protocol.OK, payload
    except JobTimeout:
        payload = f"handler exceeded {job.timeout:g} s (JOB_TIMEOUT)".encode()
        log.error("%s: job %s: %s", where, job.id, payload.decode())
        return protocol.FAILED, payload
    except Exception as exc:
        log.exception("%s: job %s failed", where, job.id)
        return protocol.FAILED, error_text(exc)
    finally:
        if timer is not None:
            timer.close()
