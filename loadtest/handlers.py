"""A handler that keeps its own books: HANDLER=loadtest.handlers:record.

Appends "job-id attempt" to $GREENPIPE_RECORD_DIR/<worker port>.ids once the
job is handled (one unbuffered write per job), so a run can be checked against
what the handlers saw, not only the web's counters.
"""

from __future__ import annotations

import os

from greenpipe.protocol import Job

_fds: dict[str, int] = {}


def write_record(job: Job) -> None:
    directory = os.environ.get("GREENPIPE_RECORD_DIR")
    if not directory:
        return
    port = job.worker.rsplit(":", 1)[1]
    fd = _fds.get(port)
    if fd is None:
        path = os.path.join(directory, f"{port}.ids")
        fd = _fds[port] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, f"{job.id} {job.attempt}\n".encode())


def record(job: Job) -> None:
    write_record(job)
