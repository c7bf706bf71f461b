"""A handler that reports progress, for `python -m bench.micro` (worker_progress).

Ten reports per job, as a loop over ten items would make: the worker keeps the
last per job and sends it with its next heartbeat (or just before the job's
acknowledgement), so the cost is the calls, not messages.
"""

from greenpipe.jobs import Job


def reporting(job: Job) -> None:
    for i in range(1, 11):
        job.progress(i, 10, "item")
