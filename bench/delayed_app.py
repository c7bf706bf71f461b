"""The app and handlers of ``python -m bench.delayed`` (jobs that wait).

    server.py --port 0 --handler bench.delayed_app:handlers
    python -m bench.delayed_app --port 0 --workers 127.0.0.1:PORT,...

``GET /`` pushes one ordinary job (what wrk sends). ``POST /later`` with
``{"dues": [wall times]}`` pushes one job per due time with ``push(at=)``,
so the handler knows the exact time its job waited for: each run appends
"id due started" to ``$BENCH_DELAYED_DIR/<pid>.late``.
"""

from gevent import monkey

monkey.patch_all()  # first statement: patching late leaves blocking sockets behind

import os  # noqa: E402
import time  # noqa: E402
from datetime import UTC, datetime  # noqa: E402

from flask import Flask, request  # noqa: E402

from greenpipe import Greenpipe, Handlers, json_errors, serve  # noqa: E402
from greenpipe.jobs import Job  # noqa: E402

FOLDER = os.environ.get("BENCH_DELAYED_DIR", "")
handlers = Handlers()
_book: list[int] = []  # the book's file descriptor, opened at the first run


@handlers.job("now")
def now(job: Job) -> None:
    """An ordinary job: nothing to do."""


@handlers.job("timed")
def timed(job: Job) -> None:
    started = time.time()
    if not FOLDER:
        return
    if not _book:
        path = os.path.join(FOLDER, f"{os.getpid()}.late")
        _book.append(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
    line = f"{job.id} {job.json()['due']:.6f} {started:.6f}\n"
    os.write(_book[0], line.encode())


app = Flask(__name__)
pipe = Greenpipe(app, ops_routes=True)  # the bench reads /stats on its port
json_errors(app)


@app.get("/")
def push_now():
    return {"id": pipe.push("now").id}, 202


@app.post("/later")
def push_later():
    ids = []
    for due in request.get_json()["dues"]:
        at = datetime.fromtimestamp(due, UTC)
        ids.append(pipe.push("timed", json={"due": due}, at=at).id)
    return {"ids": ids}, 202


if __name__ == "__main__":
    raise SystemExit(serve(app))
