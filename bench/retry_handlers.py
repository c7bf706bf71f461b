"""The handler of the bench's retries section: GET / with a retry policy.

    server.py --handler bench.retry_handlers:handlers

GREENPIPE_BENCH_FAIL=N makes N per cent of jobs (chosen by id) fail their
first run with ConnectionError; the policy retries them after 0.1 s (no
jitter, so the delay asked is known). With GREENPIPE_BENCH_DIR set, each
retried run appends how late it started against the time asked (seconds) to
<dir>/<pid>.late.
"""

from __future__ import annotations

import os
import time

from greenpipe import Handlers
from greenpipe.jobs import Job

DELAY_S = 0.1
FAIL = int(os.environ.get("GREENPIPE_BENCH_FAIL", "0"))
FOLDER = os.environ.get("GREENPIPE_BENCH_DIR", "")
_due: dict[str, float] = {}  # job id -> when its retry was asked for (this worker)

handlers = Handlers()


@handlers.job("/", retries=3, backoff=DELAY_S, jitter=False)
def root(job: Job) -> None:
    if job.retries == 0:
        if FAIL and int(job.id[-4:], 16) % 100 < FAIL:
            if FOLDER:
                with open(os.path.join(FOLDER, f"{os.getpid()}.due"), "a") as file:
                    file.write(f"{job.id} {time.time() + DELAY_S:.6f}\n")
            raise ConnectionError("failing once, on purpose")
        return
    if FOLDER:
        with open(os.path.join(FOLDER, f"{os.getpid()}.ran"), "a") as file:
            file.write(f"{job.id} {time.time():.6f}\n")
