"""The handler of ``python -m bench.schedule``: a periodic job every second.

    server.py --handler bench.periodic_handlers:handlers

Each run appends "job-id started-at" (wall time, the clock ticks are read on)
to $BENCH_PERIODIC/<pid>.runs: when the handler started, for its lateness
against its tick (the scheduler's DEBUG line per tick maps job id -> tick).
"""

from __future__ import annotations

import os
import time

from greenpipe import Handlers
from greenpipe.jobs import Job

handlers = Handlers()


@handlers.periodic(every=1)
def beat(job: Job) -> None:
    started = time.time()
    folder = os.environ.get("BENCH_PERIODIC")
    if folder:
        with open(os.path.join(folder, f"{os.getpid()}.runs"), "a") as file:
            file.write(f"{job.id} {started:.6f}\n")
