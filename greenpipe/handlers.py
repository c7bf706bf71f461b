"""Handlers a worker can run (HANDLER=greenpipe.handlers:NAME).

A handler is any callable taking a `greenpipe.protocol.Job`; it runs in a
greenlet of the worker's pool, so it should block only cooperatively (gevent
patched I/O, gevent.sleep). What it returns travels back in the
acknowledgement (as JSON) when a client waits with ``Prefer: wait=N``.
"""

from __future__ import annotations

import logging
from typing import Any

from greenpipe.jobs import Job

log = logging.getLogger("greenpipe.jobs")


def log_job(job: Job) -> None:
    """The default: one log line per job, to watch the messages flow in the console.

    The worker's log names its port; silence this with LOG_LEVEL=WARNING, or use
    ``greenpipe.handlers:noop``.
    """
    log.info(
        "%s: job %s attempt %d: %s %s%s%s (%d bytes)",
        job.worker,
        job.id,
        job.attempt,
        job.method,
        job.path,
        "?" if job.query else "",
        job.query,
        len(job.body),
    )


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
