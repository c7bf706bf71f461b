"""Handlers for the latency and memory benchmarks.

stamp: the body is the client's time.monotonic() when it sent the request;
appends (now - that) to $BENCH_STAMPS/<port>.lat. CLOCK_MONOTONIC is one clock
for every process on the machine, so this is request sent -> handler started.
hold: keeps the job in flight for a minute (for bytes per job in flight).
"""

from __future__ import annotations

import os
import time

import gevent

from greenpipe.jobs import Job

_fds: dict[str, int] = {}


def stamp(job: Job) -> None:
    now = time.monotonic()
    port = job.worker.rsplit(":", 1)[1]
    fd = _fds.get(port)
    if fd is None:
        path = os.path.join(os.environ["BENCH_STAMPS"], f"{port}.lat")
        fd = _fds[port] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, f"{now - float(job.body):.6f}\n".encode())


def hold(job: Job) -> None:
    gevent.sleep(60)
