"""The web's books: every counter, and one `Snapshot` that every page reads.

The dispatcher counts per batch (an ACKS message, a lost worker), never per
job beyond an addition; `/stats`, `/metrics`, the dashboard and its history
all read a `Snapshot` taken when they are asked, so "jobs in flight" and
every other figure is computed in one place.
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from greenpipe.jobs import Envelope, Status
from greenpipe.link import READY, Link

if TYPE_CHECKING:
    from greenpipe.journal import Journal

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0, 30.0)  # fmt: skip
ERROR_CHARS = 200  # of a failure's error text kept for the dashboard
RECENT_FAILURES = 20
RETRIED = "(retried) "  # starts a recent failure whose job waits for a retry
NAMES_KEPT = 1000  # job names with figures of their own; later ones count as ""
REJECT_REASONS = ("barrier", "no_worker", "max_pending", "max_scheduled", "stopping",
                  "journal", "no_handler")  # fmt: skip


class Books:
    """What happened to jobs in this process, counted."""

    def __init__(self) -> None:
        self.accepted = self.acked = self.failed = self.resent = self.rejected = 0
        self.stray_acks = self.malformed = 0
        self.added = self.removed = 0  # workers added and removed live (SIGHUP)
        self.redriven = 0  # kept jobs re-sent (Resender.redriven, read at a snapshot)
        self.replayed = 0  # jobs replayed from the journal at start
        self.retried = 0  # runs that failed and were held for a retry
        self.cancelled = 0  # jobs cancelled (pipe.cancel, DELETE /jobs/<id>)
        self.rejected_by: dict[str, int] = {}  # 503s by reason (REJECT_REASONS)
        # (time, job id, worker, error, job name): the latest, for the dashboard.
        self.recent_failures: deque[tuple[float, str, str, str, str]] = deque(
            maxlen=RECENT_FAILURES
        )
        # Accepted -> acknowledged, seconds: a count per bucket (+Inf last), sum.
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        # The same by job name: per-bucket counts, then the sum, then failures.
        # /metrics labels the names the workers announce (greenpipe.metrics).
        self.by_name: dict[bytes, list[float]] = {}

    def reject(self, reason: str) -> None:
        self.rejected += 1
        self.rejected_by[reason] = self.rejected_by.get(reason, 0) + 1

    def settled(
        self,
        done: Sequence[Envelope],
        results: Sequence[tuple[Envelope, Status, bytes]],
        stray: int,
        worker: str,
        now: float,
    ) -> None:
        """One ACKS message's jobs: acknowledged, their latency, their failures."""
        counts, bounds, waited = self.latency_counts, LATENCY_BUCKETS, 0.0
        by_name = self.by_name
        for job in done:
            took = now - job.accepted_at
            waited += took
            bucket = bisect_left(bounds, took)
            counts[bucket] += 1
            named = by_name.get(job.name or job.path) or self._named(job)
            named[bucket] += 1
            named[-2] += took
        for job, status, payload in results:
            took = now - job.accepted_at
            waited += took
            bucket = bisect_left(bounds, took)
            counts[bucket] += 1
            named = by_name.get(job.name or job.path) or self._named(job)
            named[bucket] += 1
            named[-2] += took
            if status is Status.FAILED:
                named[-1] += 1
                self.failure(job.id, worker, payload, job.name or job.path)
            elif status is Status.DEAD:  # its last retry failed
                named[-1] += 1
        self.latency_sum += waited
        self.stray_acks += stray
        self.acked += len(done) + len(results)

    def _named(self, job: Envelope) -> list[float]:
        """A new name's figures; past NAMES_KEPT names, the shared ones of ""."""
        name = job.name or job.path
        if len(self.by_name) >= NAMES_KEPT:
            name = b""
            if name in self.by_name:
                return self.by_name[name]
        figures = self.by_name[name] = [0] * (len(LATENCY_BUCKETS) + 1) + [0.0, 0]
        return figures

    def failure(self, job_id: str, worker: str, payload: bytes, name: bytes) -> None:
        self.failed += 1
        error = payload[:ERROR_CHARS].decode("utf-8", "replace")
        self.recent_failures.append(
            (time.time(), job_id, worker, error, name.decode("utf-8", "replace"))
        )

    def retrying(self, job_id: str, worker: str, error: bytes, name: bytes) -> None:
        """A run that failed and waits for its retry: a recent failure, so marked.

        Counted in `retried` (by the caller, per batch), not in `failed`.
        """
        text = RETRIED + error[:ERROR_CHARS].decode("utf-8", "replace")
        self.recent_failures.append(
            (time.time(), job_id, worker, text, name.decode("utf-8", "replace"))
        )


@dataclass(frozen=True, slots=True)
class WorkerView:
    """One worker as the pages show it."""

    report: dict[str, Any]  # its line in /stats
    ready: bool
    figures: (
        tuple | None
    )  # the worker's own (handled, failed, refused, run sum, run counts)
    heartbeat_age: float | None  # seconds since it was last heard from


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every figure of one web process at one moment."""

    name: str
    accepted: int
    acked: int
    failed: int
    resent: int
    rejected: int
    rejected_by: dict[str, int]
    stray_acks: int
    malformed: int
    redriven: int
    replayed: int
    workers_added: int
    workers_removed: int
    dead_lettered: int
    pending: int
    pending_by_queue: dict[str, int]
    in_flight: int
    waiting: int  # held until a time: retries waiting out their backoff
    retried: int
    cancelled: int
    pushed: int
    credit: int  # of the ready workers, all together
    barrier: bool
    latency_counts: tuple[int, ...]
    latency_sum: float
    by_name: dict[str, tuple[float, ...]]  # job name -> its bucket counts, sum, failed
    workers: list[WorkerView]
    journal: dict[str, Any]
    recent_failures: list[tuple[float, str, str, str, str]] = field(
        default_factory=list
    )
    pid: int = field(default_factory=os.getpid)

    def stats(self) -> dict[str, Any]:
        """/stats: the figures as JSON."""
        return {
            "pid": self.pid,
            "accepted": self.accepted,
            "pending": self.pending,
            "pending_by_queue": self.pending_by_queue,
            "in_flight": self.in_flight,
            "waiting": self.waiting,
            "acked": self.acked,
            "failed": self.failed,
            "resent": self.resent,
            "retried": self.retried,
            "cancelled": self.cancelled,
            "dead_lettered": self.dead_lettered,
            "redriven": self.redriven,
            "workers_added": self.workers_added,
            "workers_removed": self.workers_removed,
            "pushed": self.pushed,
            "rejected": self.rejected,
            "stray_acks": self.stray_acks,
            "malformed": self.malformed,
            "barrier": self.barrier,
            "journal": self.journal,
            "workers": [worker.report for worker in self.workers],
        }


def stop_summary(stats: dict[str, Any]) -> str:
    """The line a stopping web logs: what became of the jobs it accepted.

    Cancelled jobs are counted too (those cancelled while queued were never
    acknowledged), and runs held for a retry, so the figures add up.
    """
    return (
        f"stopped; accepted {stats['accepted']}, acknowledged {stats['acked']} "
        f"({stats['failed']} failed), cancelled {stats['cancelled']}, retried "
        f"{stats['retried']}, re-sent {stats['resent']}, dead-lettered "
        f"{stats['dead_lettered']}"
    )


def journal_report(journal: Journal | None, replayed: int) -> dict[str, Any]:
    """The journal's line in /stats."""
    if journal is None:
        return {"mode": "off"}
    return {"mode": journal.sync, "path": journal.path, "slot": journal.slot,
            "healthy": journal.healthy, "last_error": journal.last_error,
            "jobs_written": journal.written, "groups": journal.groups,
            "bytes_written": journal.bytes_written, "carried": journal.carried,
            "failures": journal.failures, "replayed": replayed,
            "bytes_on_disk": journal.size()}  # fmt: skip


def take(
    name: str,
    books: Books,
    links: Sequence[Link],
    now: float,
    *,
    pending: int = 0,
    pending_by_queue: dict[str, int] | None = None,
    waiting: int = 0,
    barrier: bool = True,
    dead_lettered: int = 0,
    journal: dict[str, Any] | None = None,
) -> Snapshot:
    """A `Snapshot` of `books` and `links` (`now`: the links' clock)."""
    workers = [
        WorkerView(
            {**link.report(), "serves": link.serves.describe()},
            link.state == READY,
            link.figures,
            round(now - link.last_seen, 1) if link.last_seen else None,
        )
        for link in links
    ]
    return Snapshot(
        name=name,
        accepted=books.accepted,
        acked=books.acked,
        failed=books.failed,
        resent=books.resent,
        rejected=books.rejected,
        rejected_by=dict(books.rejected_by),
        stray_acks=books.stray_acks,
        malformed=books.malformed,
        redriven=books.redriven,
        replayed=books.replayed,
        workers_added=books.added,
        workers_removed=books.removed,
        dead_lettered=dead_lettered,
        pending=pending,
        pending_by_queue=pending_by_queue or {"default": pending},
        waiting=waiting,
        retried=books.retried,
        cancelled=books.cancelled,
        in_flight=sum(w.report["in_flight"] for w in workers),
        pushed=sum(link.sent for link in links if not link.reliable),
        credit=sum(w.report["credit"] for w in workers if w.ready),
        barrier=barrier,
        latency_counts=tuple(books.latency_counts),
        latency_sum=books.latency_sum,
        by_name={
            name.decode("utf-8", "replace"): tuple(figures)
            for name, figures in books.by_name.items()
        },  # fmt: skip
        workers=workers,
        journal=journal if journal is not None else {"mode": "off"},
        recent_failures=list(books.recent_failures),
    )
