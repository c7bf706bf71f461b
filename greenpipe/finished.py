"""What became of finished jobs, by id, for a while: GET /jobs/<id>, pipe.status()."""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from greenpipe.jobs import Progress, Status

MAX_KEPT_RESULT = 64 * 1024  # bytes of a result kept for status lookups

# status, worker, attempt, payload, finished (the clock's), retries, name,
# the last progress report (or None)
Record = tuple[Status, str, int, bytes, float, int, bytes, Progress | None]


class FinishedJobs:
    """Finished jobs' outcomes, oldest first, at most `keep` of them for `ttl` s.

    Memory stays bounded under any load: adding past `keep` forgets the oldest,
    and a lookup past `ttl` forgets everything older. A result over 64 KiB is
    not kept (whoever needs it waits for it with ``Prefer: wait``).
    """

    def __init__(
        self, keep: int, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.keep = keep
        self.ttl = ttl
        self._clock = clock
        self._outcomes: OrderedDict[str, Record] = OrderedDict()
        # Records added since `take_fresh`, for a `ResultStore` (None: no
        # store, nothing tracked).
        self.fresh: list[tuple[str, Record]] | None = None

    def add(
        self,
        job_id: str,
        status: Status,
        worker: str,
        attempt: int,
        payload: bytes,
        now: float | None = None,
        retries: int = 0,
        name: bytes = b"",
        progress: Progress | None = None,
    ) -> None:
        """Keep one job's outcome; `now` (the clock's) saves a clock call per job.

        `retries`: handler retries before the last run (the job ran one more).
        `name`: the job's name (a forwarded request's: its path).
        `progress`: its handler's last report, if it made one.
        """
        outcomes = self._outcomes
        record = (status, worker, attempt, payload, now or self._clock(), retries,
                  name, progress)  # fmt: skip
        outcomes[job_id] = record
        if self.fresh is not None:
            self.fresh.append((job_id, record))
        if len(outcomes) > self.keep:
            outcomes.popitem(last=False)

    def take_fresh(self) -> tuple[list[tuple[str, Record]], float]:
        """The records added since the last call, and what turns their times
        into wall-clock ones (for `ResultStore.write`); even those memory
        forgot since (`keep`)."""
        fresh = self.fresh
        if not fresh:
            return [], 0.0
        self.fresh = []
        return fresh, time.time() - self._clock()

    @property
    def store(self) -> dict[str, Record]:
        """The outcomes themselves, for a caller that adds a batch inline and
        then calls `trim` once (the dispatcher, per ACKS message): a method
        call per job is most of what keeping one would cost. That caller
        extends `fresh` too, when it is not None."""
        return self._outcomes

    def trim(self) -> None:
        """Forget the oldest outcomes beyond `keep`."""
        outcomes, keep = self._outcomes, self.keep
        while len(outcomes) > keep:
            outcomes.popitem(last=False)

    def __len__(self) -> int:
        return len(self._outcomes)

    def get(self, job_id: str) -> dict[str, Any] | None:
        """The job's outcome as /jobs/<id> shows it, or None (unknown or expired)."""
        self._expire()
        found = self._outcomes.get(job_id)
        if found is None:
            return None
        status, worker, attempt, payload, finished, retries, name, progress = found
        finished += time.time() - self._clock()  # monotonic -> wall clock
        return report(job_id, status, worker, attempt, payload, finished, retries,
                      name, progress)  # fmt: skip

    def _expire(self) -> None:
        horizon = self._clock() - self.ttl
        outcomes = self._outcomes
        while outcomes:
            oldest = next(iter(outcomes.values()))
            if oldest[4] >= horizon:
                return
            outcomes.popitem(last=False)


def report(
    job_id: str,
    status: Status,
    worker: str,
    attempt: int,
    payload: bytes,
    finished: float,
    retries: int,
    name: bytes,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """A finished job's answer to GET /jobs/<id> (`finished`: Unix seconds)."""
    answer: dict[str, Any] = {
        "id": job_id,
        "name": name.decode("utf-8", "replace"),
        "status": status.value,
        "worker": worker,
        "attempt": attempt,
        "runs": retries + 1,  # the handler ran this many times (retries)
        "finished_at": round(finished, 3),
    }
    if progress is not None:  # its handler's last report
        answer["progress"] = progress.answer()
    if status is Status.DONE:
        if len(payload) > MAX_KEPT_RESULT:
            answer["result_not_kept"] = f"{len(payload)} bytes; over 64 KiB"
        elif payload:
            try:  # the handler's return value, as JSON (a worker sends JSON)
                answer["result"] = json.loads(payload)
            except ValueError:  # a foreign worker's bytes: shown as text
                answer["result_text"] = payload.decode("utf-8", "replace")
    elif payload:
        key = "reason" if status in (Status.DEAD, Status.CANCELLED) else "error"
        answer[key] = payload.decode("utf-8", "replace")
    return answer
