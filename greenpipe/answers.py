"""What a web answers about itself: whether it is healthy, and where a job is.

Plain functions over the rooms the dispatcher owns; they return values and
change nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from greenpipe.finished import FinishedJobs
from greenpipe.fleet import Fleet
from greenpipe.jobs import Status, unfinished
from greenpipe.journal import Journal
from greenpipe.link import Link
from greenpipe.queues import Queues
from greenpipe.settlement import Settlement


def health(fleet: Fleet, journal: Journal | None, draining: bool) -> tuple[bool, dict]:
    """/healthz: ok once the barrier is met, a worker is ready, the web is not
    stopping and its journal (if any) writes; and why not."""
    ready, not_ready = fleet.health()
    journal_ok = journal is None or journal.healthy
    barrier = fleet.barrier.is_set()
    ok = barrier and bool(ready) and not draining and journal_ok
    return ok, {
        "status": "ok" if ok else "unavailable",
        "barrier": barrier,
        "journal": "off"
        if journal is None
        else ("ok" if journal_ok else journal.last_error),  # fmt: skip
        "ready": ready,
        "not_ready": not_ready,
    }


def job_status(
    job_id: str,
    links: Sequence[Link],
    queues: Queues,
    settlement: Settlement,
    finished: FinishedJobs,
) -> dict | None:
    """What became of a job this process accepted; None if unknown or expired.

    Jobs not finished are looked for where they are (a link's in-flight
    table, the queues): a lookup is rare, a map kept per job is not free.
    """
    key = job_id.encode("ascii", "replace")
    for link in links:
        job = link.jobs.get(key)
        if job is not None:
            return unfinished(job, Status.IN_FLIGHT, link.name)
    return queues.status(job_id) or settlement.status(job_id) or finished.get(job_id)


STATES = ("queued", "scheduled", "retrying", "in_flight")


def reporting(links: Sequence[Link], limit: int) -> list[dict]:
    """The jobs running now whose handler reported progress, the latest
    report first, at most `limit` (the dashboard's "Running, with progress")."""
    found = [(job.progress.at, job, link.name) for link in links
             for job in link.jobs.values() if job.progress is not None]  # fmt: skip
    found.sort(key=lambda item: item[0], reverse=True)
    return [unfinished(job, Status.IN_FLIGHT, at) for _, job, at in found[:limit]]


def held_jobs(
    links: Sequence[Link],
    queues: Queues,
    settlement: Settlement,
    status: str | None = None,
    name: str | None = None,
) -> list[dict]:
    """Every job this process holds and has not finished, as its status answers
    it: queued (in the order they go), scheduled and retrying (by time), then
    in flight (by worker); filtered by `status` (one of `STATES`) and `name`
    (a forwarded request's is its path). One pass over what the web holds."""
    if status is not None and status not in STATES:
        raise ValueError(
            f"status {status!r} is not one of {', '.join(STATES)}; a finished "
            "job is looked up by id (GET /jobs/<id>), a failed one in the kept "
            "jobs (GET /failed)"
        )
    out = []
    raw = None if name is None else name.encode("utf-8")
    for job, state in queues.held():
        if (status is None or state.value == status) and (
            raw is None or (job.name or job.path) == raw
        ):
            out.append(unfinished(job, state))
    if status in (None, "in_flight"):
        for link in links:
            for job in link.jobs.values():
                if raw is None or (job.name or job.path) == raw:
                    out.append(unfinished(job, Status.IN_FLIGHT, link.name))
        for job, _ in settlement.holding.values():  # a retry being journaled
            if raw is None or (job.name or job.path) == raw:
                out.append(unfinished(job, Status.IN_FLIGHT))
    return out
