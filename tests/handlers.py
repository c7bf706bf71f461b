"""Handlers for tests (HANDLER=tests.handlers:record).

`record` appends "job-id attempt" to $GREENPIPE_RECORD_DIR/<worker port>.ids
after the job's work is done, one unbuffered write per job, so the file is the
handler's own account of what it handled, independent of the web's counters.
The JSON body steers the work:

    {"sleep": 0.2}                  sleeps 0.2 s cooperatively (gevent)
    {"sleep_first": 30}             sleeps only on the first attempt
    {"block": 3}                    blocks the worker's event loop for 3 s
    {"block_first": 3}              the same, on attempt 1 only
    {"fail": "text"}                raises RuntimeError("text")
    {"fail_unless": "/a/path"}      raises RuntimeError until that file exists
    {"result": ...}                 returned as the result

GREENPIPE_SLEEP=0.2 in a worker's environment makes every job sleep that long
there: one slow worker among fast ones.
"""

from __future__ import annotations

import json
import os
import time

import gevent
from gevent import monkey

from greenpipe.jobs import Job
from greenpipe.testing import write_record

_blocking_sleep = monkey.get_original("time", "sleep")
_EXTRA_SLEEP = float(os.environ.get("GREENPIPE_SLEEP", "0"))


def record(job: Job):
    steer = {}
    if job.body[:1] == b"{":
        try:
            steer = json.loads(job.body)
        except ValueError:
            steer = {}
    if steer.get("sleep"):
        gevent.sleep(steer["sleep"])
    if steer.get("sleep_first") and job.attempt == 1:
        gevent.sleep(steer["sleep_first"])
    if _EXTRA_SLEEP:
        gevent.sleep(_EXTRA_SLEEP)
    if steer.get("block"):
        _busy(steer["block"])
    if steer.get("block_first") and job.attempt == 1:
        _busy(steer["block_first"])
    write_record(job)
    if steer.get("fail"):
        raise RuntimeError(steer["fail"])
    if steer.get("fail_unless") and not os.path.exists(steer["fail_unless"]):
        raise RuntimeError(f"{steer['fail_unless']} does not exist yet")
    return steer.get("result")


def _busy(seconds: float) -> None:
    """Hold the event loop: an unpatched sleep, as a careless handler would."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        _blocking_sleep(0.05)
