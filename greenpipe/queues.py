"""The jobs the web holds that no worker holds: new, taken back, and waiting.

`fresh` holds jobs accepted and never sent (and those a worker gave back
when it left in good order, at its head); `retry` holds suspects taken back
from a lost worker (they travel alone); `lanes` hold, by job name and queue,
jobs of either kind whose workers were all full while others were not
(routing: `greenpipe.routing`); `later` holds jobs waiting for a time (a
delayed push, a retry's backoff). Lookups by id scan them: a status lookup
or a cancel is rare, a map kept per job is not free.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from greenpipe.jobs import Envelope, Status, unfinished
from greenpipe.later import Later


class Queues:
    """fresh, retry, lanes and later: see the module docstring."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.fresh: deque[Envelope] = deque()  # accepted, never sent
        self.retry: deque[Envelope] = deque()  # taken back from a lost worker
        # (suspect, job name, queue) -> its jobs, oldest first, whose workers
        # were full
        self.lanes: dict[tuple[bool, bytes, bytes], deque[Envelope]] = {}
        self.later = Later(clock)  # waiting for a time

    def add(self, jobs: Iterable[Envelope]) -> None:
        """Jobs admitted and kept: fresh, or on the timer if pushed with a delay."""
        fresh, later = self.fresh, self.later
        for job in jobs:
            if job.not_before:
                later.add(job)
            else:
                fresh.append(job)

    def pending(self) -> int:
        """Jobs waiting for a worker now (not those waiting for a time)."""
        return len(self.fresh) + len(self.retry) + self.in_lanes()

    def by_queue(self, listened: Iterable[bytes] = ()) -> dict[str, int]:
        """Jobs waiting for a worker now, by queue (those in `listened` even
        at 0): bounded by the queues workers listen on and jobs were pushed to."""
        counts = dict.fromkeys(listened, 0)
        for queue in (self.fresh, self.retry, *self.lanes.values()):
            for job in queue:
                counts[job.queue] = counts.get(job.queue, 0) + 1
        return {queue.decode("ascii"): n for queue, n in sorted(counts.items())}

    def in_lanes(self) -> int:
        """Jobs waiting in a name's lane: its workers full or lost."""
        return sum(map(len, self.lanes.values())) if self.lanes else 0

    def due(self, now: float) -> None:
        """Jobs whose time has come go out as new jobs, ahead of the fresh ones.

        Their time came before what was pushed since: queued behind a backlog
        they would start late by all of it (seconds under load).
        """
        if self.later:
            self.fresh.extendleft(reversed(self.later.due(now)))

    def remove(self, job_id: str) -> Envelope | None:
        """Take a job out of whichever queue holds it (a cancel); None if none."""
        job = self.later.remove(job_id)
        if job is not None:
            return job
        for queue in (self.retry, self.fresh, *self.lanes.values()):
            for each in queue:
                if each.id == job_id:
                    queue.remove(each)
                    return each
        return None

    def put_back(self, job: Envelope, status: Status) -> None:
        """A job taken out by `remove` goes back (its cancel was not journaled):
        on the timer if it waited for a time, else at the head of its queue."""
        if status.waiting:
            self.later.add(job)
        else:
            (self.retry if job.suspect else self.fresh).appendleft(job)

    def status(self, job_id: str) -> dict[str, Any] | None:
        """``queued`` or ``retrying`` (when, and why) for a job held here."""
        job = self.later.get(job_id)  # a dict: first (a purge of 100,000 asks)
        if job is not None:
            if not job.retries:  # pushed with a delay, never ran
                return unfinished(job, Status.SCHEDULED)
            return unfinished(job, Status.RETRYING)
        for queue in (self.retry, self.fresh, *self.lanes.values()):
            for job in queue:
                if job.id == job_id:
                    return unfinished(job, Status.QUEUED)
        return None

    def held(self) -> Iterator[tuple[Envelope, Status]]:
        """Every job held here and what it waits for, the next to go first."""
        for queue in (self.retry, *self.lanes.values(), self.fresh):
            for job in queue:
                yield job, Status.QUEUED
        for job in sorted(self.later, key=lambda job: job.not_before):
            yield job, (Status.RETRYING if job.retries else Status.SCHEDULED)

    def take_all(self) -> list[Envelope]:
        """Empty every queue (a web stopping without a journal); what they held."""
        lanes = [job for lane in self.lanes.values() for job in lane]
        jobs = [*self.retry, *lanes, *self.fresh, *self.later]
        self.retry.clear()
        self.lanes.clear()
        self.fresh.clear()
        for job in list(self.later):
            self.later.remove(job.id)
        return jobs
