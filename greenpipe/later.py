"""Jobs that wait for a time: the web's one timer (delayed pushes, retries' backoff).

A heap ordered by due time, on the dispatcher's monotonic clock; each job's
wall-clock not-before time is in the journal (LATER records), so a restart
puts it back here and it never runs early. Removal (a cancel) is lazy: the
entry stays in the heap, marked, and is skipped when it comes up.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Iterator

from greenpipe.jobs import Envelope

MAX_ERRORS = 5  # a job's last errors kept (its dead letter shows them)


class Later:
    """Jobs by due time; `due(now)` hands over those whose time has come.

    `clock` is the dispatcher's monotonic clock, which `due` is given.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._heap: list[tuple[float, int, Envelope]] = []
        self._by_id: dict[str, Envelope] = {}
        self._seq = itertools.count()
        self._clock = clock

    def hold(self, job: Envelope, delay: float, error: str) -> None:
        """`job`'s run failed and is to be retried after `delay` s: hold it."""
        next_run(job, delay, error)
        self.add(job)

    def add(self, job: Envelope) -> None:
        """Hold `job` until its ``not_before`` (wall time), on the clock.

        The wall clock is read first: the due time on the clock can only come
        out late, by the instant between the two reads, never early.
        """
        wall = time.time()
        due = self._clock() + job.not_before - wall
        self._by_id[job.id] = job
        heapq.heappush(self._heap, (due, next(self._seq), job))

    def due(self, now: float) -> list[Envelope]:
        """Remove and return the jobs due at `now`, earliest first."""
        heap, out = self._heap, []
        while heap and heap[0][0] <= now:
            _, _, job = heapq.heappop(heap)
            if self._by_id.get(job.id) is job:
                del self._by_id[job.id]
                out.append(job)
        return out

    def next_due(self) -> float | None:
        """When the earliest job is due (the dispatcher's clock), or None."""
        heap = self._heap
        while heap and self._by_id.get(heap[0][2].id) is not heap[0][2]:
            heapq.heappop(heap)  # removed: drop it now
        return heap[0][0] if heap else None

    def remove(self, job_id: str) -> Envelope | None:
        """Take a waiting job out (a cancel); None if it does not wait here."""
        return self._by_id.pop(job_id, None)

    def get(self, job_id: str) -> Envelope | None:
        return self._by_id.get(job_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Envelope]:
        return iter(list(self._by_id.values()))


def next_run(job: Envelope, delay: float, error: str) -> None:
    """Make `job` its next run, due in `delay` s (`Later.add` holds it then).

    It will go out as a new run: its deliveries count afresh (MAX_DELIVERIES
    bounds the deliveries of one run), its retries one more, and `error`
    joins its last errors (for the dead-letter file, if it ends there).
    """
    job.retries += 1
    job.deliveries = 0
    job.suspect = False
    job.not_before = time.time() + delay
    job.errors = [*job.errors[-(MAX_ERRORS - 1) :], error]
