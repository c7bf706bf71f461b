"""Handlers with policies, and a small app that pushes jobs to them by name.

Worker:  python server.py --port 0 --handler tests.retry_handlers:handlers
Web:     python -m tests.retry_handlers --port 0 --workers 127.0.0.1:PORT

``POST /jobs/<name>`` pushes one job named `name` with the JSON body;
``POST /later/<name>`` pushes one per due time it is given (``push(at=)``). Each run
appends a JSON line (id, attempt, retries, time, event) to
``$GREENPIPE_RECORD_DIR/<pid>.runs``, the book the tests read.
"""

from gevent import monkey

monkey.patch_all()  # first statement: patching late leaves blocking sockets behind

import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from datetime import UTC, datetime  # noqa: E402

import gevent  # noqa: E402
from flask import Flask, request  # noqa: E402

from greenpipe import Cancelled, Greenpipe, Handlers, Retry, json_errors, serve  # noqa: E402
from greenpipe.jobs import Job  # noqa: E402

handlers = Handlers()


def _note(job: Job, event: str) -> None:
    folder = os.environ.get("GREENPIPE_RECORD_DIR")
    if not folder:
        return
    line = json.dumps({"id": job.id, "attempt": job.attempt, "retries": job.retries,
                       "t": time.time(), "event": event})  # fmt: skip
    with open(os.path.join(folder, f"{os.getpid()}.runs"), "a") as file:
        file.write(line + "\n")


@handlers.job("flaky", retries=3, backoff=0.2, max_backoff=1.0)
def flaky(job: Job) -> dict:
    """Fails its first `fail` runs, then succeeds."""
    _note(job, "ran")
    if job.retries < job.json().get("fail", 0):
        raise ConnectionError(f"upstream down (run {job.retries + 1})")
    return {"runs": job.retries + 1}


@handlers.job("later", retries=1)
def later(job: Job) -> None:
    """Asks to run again `after` seconds from now, once."""
    _note(job, "ran")
    if job.retries == 0:
        raise Retry(after=job.json()["after"])


@handlers.job("swallow", timeout=0.5)
def swallow(job: Job) -> None:
    """Wraps its work in ``except Exception``, as careless handlers do."""
    try:
        gevent.sleep(30)  # sleep-ok: the handler's work (cancelled or timed out)
    except Exception:  # noqa: BLE001 (on purpose: it must not catch the limit)
        _note(job, "caught it")
    _note(job, "ran on")


@handlers.job("patient", timeout=8)
def patient(job: Job) -> None:
    """Works `work` seconds, within its own limit (longer than the web's JOB_TIMEOUT)."""
    _note(job, "started")
    gevent.sleep(job.json()["work"])  # sleep-ok: the handler's work
    _note(job, "ran")


@handlers.job("quick")
def quick(job: Job) -> None:
    _note(job, "ran")


@handlers.job("long")
def long(job: Job) -> None:
    _note(job, "started")
    try:
        gevent.sleep(30)  # sleep-ok: the handler's work (cancelled or timed out)
    except Cancelled:
        _note(job, "cancelled")
        raise


@handlers.job("steps")
def steps(job: Job) -> dict:
    """Reports step i of `n`, then waits for the test's go file for it (the
    test releases each step once it saw it in GET /jobs/<id>)."""
    n = job.json()["n"]
    folder = os.environ["GREENPIPE_RECORD_DIR"]
    for i in range(1, n + 1):
        job.progress(i, n, f"step {i}")
        go = os.path.join(folder, f"{job.id}.go{i}")
        while not os.path.exists(go):
            gevent.sleep(0.01)  # sleep-ok: the handler's work (waiting to be let on)
    return {"steps": n}


@handlers.job("burst")
def burst(job: Job) -> None:
    """Reports `n` steps as fast as it can, then ends at once: its last
    report must still reach the web before its acknowledgement."""
    n = job.json()["n"]
    for i in range(1, n + 1):
        job.progress(i, n, f"item {i}")


app = Flask(__name__)
pipe = Greenpipe(app, ops_routes=True)  # the tests read /stats on its port
json_errors(app)


@app.post("/jobs/<name>")
def push(name: str):
    return {"id": pipe.push(name, json=request.get_json()).id}, 202


@app.post("/later/<name>")
def push_later(name: str):
    """{"dues": [wall times]}: one job named `name` due at each (``push(at=)``)."""
    dues = [datetime.fromtimestamp(due, UTC) for due in request.get_json()["dues"]]
    return {"ids": [pipe.push(name, json={}, at=due).id for due in dues]}, 202


if __name__ == "__main__":
    raise SystemExit(serve(app))
