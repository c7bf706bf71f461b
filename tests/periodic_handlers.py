"""A periodic job for tests/test_schedule.py, run by a worker and pushed by a scheduler.

Worker:     python server.py --port 0 --handler tests.periodic_handlers:handlers
Scheduler:  python -m greenpipe schedule --handler tests.periodic_handlers:handlers \
                --workers 127.0.0.1:PORT

`tick` runs every second (missed ticks all caught up after a restart); each
run appends "job-id attempt" to $GREENPIPE_RECORD_DIR/<worker port>.ids.
"""

from __future__ import annotations

from greenpipe import Handlers
from greenpipe.jobs import Job
from greenpipe.testing import write_record

handlers = Handlers()


@handlers.periodic(every=1, missed="all")
def tick(job: Job) -> None:
    write_record(job)
