"""`InlinePipe`: the `Pipe` face, each job run at once in the calling process.

For tests of views without workers (``GREENPIPE_INLINE``, or ``app.testing``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from greenpipe import books as books_module
from greenpipe import config, protocol
from greenpipe.books import Books, Snapshot
from greenpipe.config import PipeSettings
from greenpipe.errors import ConfigError, Unavailable
from greenpipe.finished import FinishedJobs
from greenpipe.handling import NO_POLICY, run_handler
from greenpipe.jobs import Envelope, Job, Outcome, Progress, Status, new_job_id
from greenpipe.pipe import Pipe
from greenpipe.purge import Purged
from greenpipe.resend import Resent, chosen_ids

log = logging.getLogger(__name__)

_INLINE = {
    protocol.OK: Status.DONE,
    protocol.FAILED: Status.FAILED,
    protocol.CANCELLED: Status.CANCELLED,
}


class InlinePipe(Pipe):
    """A Pipe that runs each job at once, in the calling greenlet, with `handler`.

    No worker, no socket: for testing views with Flask's test client. The
    handler runs as a worker runs it (`greenpipe.handling`: JOB_TIMEOUT, the
    result as JSON, the error text cut), and the outcome is recorded, so
    ``status(id)`` answers as it would with workers.
    """

    def __init__(
        self, handler: Callable[[Job], Any] | None, settings: PipeSettings | None = None
    ) -> None:
        self.settings = settings or config.load_web([], {}, {})
        self.handler = handler
        self.history = None  # no dashboard: nothing flows
        self.siblings = None
        self.started = True
        self.finished = FinishedJobs(
            self.settings.status_keep, self.settings.status_ttl
        )
        self.books = Books()
        self._exposition = None
        self._prefix = f"inline{os.getpid():x}-"
        self._name = "inline"

    def start(self) -> None:
        pass

    def wait_ready(self, timeout: float) -> bool:
        return True

    def drain(self, timeout: float | None = None) -> int:
        return 0

    def close(self, timeout: float | None = None) -> int:
        return 0  # every job ran at once

    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        self._name = value

    def workers(self) -> list[str]:
        return []

    def _check_name(self, job: Envelope) -> None:
        """A name the registry does not run is refused, as a web refuses one
        no worker runs (a 503), not accepted and then failed: a test sees what
        production does."""
        from greenpipe.worker.peers import announced  # what a worker's READY says

        serves = announced(self.handler)
        if not serves.runs(job.name or job.path):
            wanted = (job.name or job.path).decode("utf-8", "replace")
            listed = ", ".join(repr(n.decode()) for n in sorted(serves.names))
            listed = listed or "no names"
            raise Unavailable(
                f"no worker runs jobs named {wanted!r}: the inline registry runs "
                f"{listed}, and has no default handler. Check the job's name, or "
                f"give inline mode a registry with @handlers.job({wanted!r})",
                retry_after=5,
            )

    def submit(self, job: Envelope, key: str = "") -> Envelope:
        if self.handler is None:
            raise ConfigError(
                "GREENPIPE_INLINE is on but no handlers were given: "
                "Greenpipe(app, handlers=...) or app.config['GREENPIPE_HANDLERS'] "
                "= 'package.module:handlers'"
            )
        self._check_name(job)
        job.named(new_job_id(self._prefix))  # as a web's: unguessable
        policy = getattr(self.handler, "policy", lambda name: NO_POLICY)(
            job.name.decode() or job.path.decode("utf-8", "replace")
        )
        timeout = policy.timeout or self.settings.job_timeout  # the handler's wins
        code = protocol.RETRY
        while code == protocol.RETRY:  # retries run at once: no backoff inline
            job.attempt += 1
            seen = Job(job.key, job.attempt, job.method.decode(),
                       job.path.decode("utf-8", "surrogateescape"),
                       job.query.decode("latin-1"),
                       job.content_type.decode("latin-1"), job.body, timeout,
                       wants_reply=job.reply is not None, name=job.name.decode(),
                       retries=job.retries)  # fmt: skip
            seen.worker = "inline"
            code, payload = run_handler(self.handler, seen, "inline", policy, True)
            job.progress = None  # each run reports afresh, as on a web
            if seen.reported is not None:  # kept with the record
                done, total, note = seen.reported
                job.progress = Progress(done, total or None, note, time.time())
            if code == protocol.RETRY:
                job.retries += 1
                self.books.retried += 1
        status = _INLINE[code]
        if status is Status.FAILED and job.retries:
            status = Status.DEAD  # as a web would: its retries spent
        self.books.accepted += 1
        if status is not Status.DONE:
            self.books.failure(job.id, "inline", payload, job.name or job.path)
        self.books.acked += 1
        self.finished.add(job.id, status, "inline", job.attempt, payload,
                          retries=job.retries, name=job.name or job.path,
                          progress=job.progress)  # fmt: skip
        job.resolve("inline", status, payload)
        return job

    def cancel(self, job_id: str) -> dict[str, Any] | None:
        return self.finished.get(job_id)  # inline, every job has finished

    def outcome(self, job: Envelope, timeout: float) -> Outcome | None:
        return job.reply.get(block=False) if job.reply is not None else None

    def status(self, job_id: str) -> dict[str, Any] | None:
        return self.finished.get(job_id)

    def owns(self, job_id: str) -> bool:
        return job_id.startswith(self._prefix)

    def health(self) -> tuple[bool, dict[str, Any]]:
        return True, {"status": "ok", "inline": True}

    def redrive(self, job_id: str) -> Envelope:
        raise KeyError(job_id)  # nothing is dead-lettered inline

    def dead_letters(self, count: int) -> list[dict[str, Any]]:
        return []

    def failed_jobs(
        self, name: str | None = None, status: str | None = None
    ) -> list[dict[str, Any]]:
        return []  # nothing is kept inline: a failure is its status alone

    def resend(
        self,
        *ids: str,
        name: str | None = None,
        every: bool = False,
        again: bool = False,
    ) -> Resent:
        return Resent(unknown=chosen_ids(ids))

    def jobs(
        self, status: str | None = None, name: str | None = None
    ) -> list[dict[str, Any]]:
        return []  # each job ran at once

    def running(self, limit: int = 20) -> list[dict[str, Any]]:
        return []  # each job ran at once: its last report is in its record

    def purge(
        self, name: str | None = None, *, every: bool = False, in_flight: bool = False
    ) -> Purged:
        return Purged()

    @property
    def dead_letter_file(self) -> str:
        return ""

    def snapshot(self) -> Snapshot:
        return books_module.take(self._name, self.books, [], 0.0)

    def stats(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "inline": True, "accepted": self.books.accepted,
                "failed": self.books.failed, "acked": self.books.acked}  # fmt: skip


def load_handlers(spec: str | None, given: Any) -> Callable[[Job], Any] | None:
    """The handlers for inline mode: given, or imported from a spec string."""
    if given is not None or not spec:
        return given  # type: ignore[no-any-return]
    from greenpipe.worker import load_handler

    return load_handler(spec)
