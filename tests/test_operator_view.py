"""The operator's view (issue 31, items 10, 12 and 13): what a running system says.

A worker that never comes up need not refuse every job (MIN_READY); the
settings' precedence holds across WORKERS and WORKERS_FILE; ``greenpipe web
--app`` serves the app as ``serve(app)`` does; retried failures show on the
dashboard; the stop summaries count every job; log lines read as English.
"""

from __future__ import annotations

import re
import signal
import time

import pytest

from greenpipe.config import load_web
from greenpipe.errors import ConfigError
from greenpipe.testing import poll_until
from tests.support import PYTHON, ROOT, Proc, Web, free_port, read_runs

HANDLERS = "tests.retry_handlers:handlers"

# -- item 10: one worker that never came up ------------------------------------------


def test_min_ready_meets_the_barrier_without_the_missing_worker_then_it_joins(
    start_worker, start_web
):
    first = start_worker()
    late_port = free_port()
    web = start_web([first, f"127.0.0.1:{late_port}"], min_ready=1, ready_timeout=1)
    web.proc.expect(rf"barrier met: 1 of 2 workers ready \(MIN_READY=1\); "
                    rf"tcp://127\.0\.0\.1:{late_port} join")  # fmt: skip
    assert [web.post("/jobs", {"n": i})[0] for i in range(4)] == [202] * 4
    start_worker(port=late_port)
    web.proc.expect(rf"worker tcp://127\.0\.0\.1:{late_port} ready: credit")
    poll_until(lambda: web.worker_stats()[1]["state"], lambda s: s == "ready", 10,
               "the late worker in the rotation")  # fmt: skip
    assert [web.post("/jobs", {"n": i})[0] for i in range(4)] == [202] * 4
    poll_until(lambda: web.worker_stats()[1]["acked"], lambda n: n >= 2, 10,
               "the late worker taking its share")  # fmt: skip


def test_min_ready_is_at_most_the_number_of_workers():
    with pytest.raises(ConfigError, match=r"MIN_READY: expected at most the number "
                       r"of workers \(2\), got 3"):  # fmt: skip
        load_web(["--workers", "127.0.0.1:1,127.0.0.1:2", "--min-ready", "3"], {})
    assert load_web([], {"MIN_READY": "all"}).min_ready == 0


def test_without_min_ready_the_refusal_says_what_to_do(start_worker, start_web):
    worker = start_worker()
    web = start_web([worker, f"127.0.0.1:{free_port()}"], wait_barrier=False,
                    ready_timeout=0.5)  # fmt: skip
    code, _, body = web.post("/jobs", {"n": 1})
    assert code == 503 and "MIN_READY" in body["detail"], body


# -- item 13: precedence, greenpipe web --app, docs that point nowhere ------------------


def test_app_config_workers_outrank_an_environment_workers_file(tmp_path, caplog):
    listed = tmp_path / "workers"
    listed.write_text("127.0.0.1:4999\n")
    settings = load_web([], {"WORKERS_FILE": str(listed)},
                        {"GREENPIPE_WORKERS": ["127.0.0.1:4444", "127.0.0.1:4445"]})  # fmt: skip
    assert [str(e) for e in settings.workers] == [
        "tcp://127.0.0.1:4444", "tcp://127.0.0.1:4445"]  # fmt: skip
    assert settings.workers_file == ""
    assert "WORKERS_FILE" in caplog.text and "outranks it" in caplog.text
    # At one level the file wins, as documented ("instead of WORKERS").
    same = load_web([], {"WORKERS_FILE": str(listed), "WORKERS": "127.0.0.1:4444"})
    assert [str(e) for e in same.workers] == ["tcp://127.0.0.1:4999"]


MYAPP = """
from gevent import monkey

monkey.patch_all()

from flask import Flask

from greenpipe import Greenpipe

app = Flask(__name__)
app.config["GREENPIPE_WORKERS"] = ["127.0.0.1:{port}"]
pipe = Greenpipe(app)


@app.post("/signup")
def signup():
    return {{"id": pipe.push("welcome", json={{}}).id}}, 202
"""


def test_greenpipe_web_serves_the_app_named_by_app(start_worker, procs, tmp_path):
    worker = start_worker(handler="greenpipe.handlers:log_job")
    (tmp_path / "myapp.py").write_text(MYAPP.format(port=worker.port))
    web = Proc("web", [PYTHON, "-m", "greenpipe", "web", "--app", "myapp:app",
                       "--port", "0", "--journal-dir", str(tmp_path / "journal")],
               env={"PYTHONPATH": str(ROOT)}, cwd=tmp_path)  # fmt: skip
    procs.append(web)
    port = int(web.expect(r"serving http://[^:]+:(\d+)", timeout=15)[1])
    web.expect(rf"feeding 1 worker: tcp://127\.0\.0\.1:{worker.port}")  # app.config's
    web.expect("barrier met")
    code, _, body = Web(web, port).post("/signup", {})
    assert code == 202, body
    worker.proc.expect(rf"job {re.escape(body['id'])} attempt 1")


def test_the_docs_point_to_nothing_outside_the_checkout():
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        assert "../shared" not in text and "DESIGN.md" not in text, path.name


# -- item 12: what the dashboard and the stop summaries say ------------------------------


def test_retried_failures_show_on_the_dashboard_and_the_summary_counts_cancels(
    start_worker, start_app, record_dir
):
    worker = start_worker(handler=HANDLERS)
    web = start_app([worker])
    flaky = web.post("/jobs/flaky", {"fail": 2})[2]["id"]
    poll_until(lambda: read_runs(record_dir).get(flaky, []),
               lambda runs: len(runs) == 3, 15, "three runs of the flaky job")  # fmt: skip
    failures = web.get("/dashboard/data")[2]["failures"]
    assert [f["error"] for f in failures if f["id"] == flaky] == [
        "(retried) ConnectionError: upstream down (run 2)",
        "(retried) ConnectionError: upstream down (run 1)",
    ], failures
    later = web.post("/jobs/later", {"after": 60})[2]["id"]
    poll_until(lambda: web.get(f"/jobs/{later}")[2].get("status"),
               lambda s: s == "retrying", 10, "the job waiting for its retry")  # fmt: skip
    code, _, body = web.request("DELETE", f"/jobs/{later}",
                                headers={"X-Greenpipe-Action": "cancel"})  # fmt: skip
    assert code == 200 and body["status"] == "cancelled", body
    web.proc.signal(signal.SIGTERM)
    web.proc.expect(r"stopped; accepted 2, acknowledged 1 \(0 failed\), cancelled 1, "
                    r"retried 3, re-sent 0, dead-lettered 0")  # fmt: skip


def test_a_worker_added_by_sighup_is_ready_not_back(start_worker, start_web, tmp_path):
    a, b = start_worker(), start_worker()
    listed = tmp_path / "workers"
    listed.write_text(f"127.0.0.1:{a.port}\n")
    web = start_web([a], workers_file=listed)
    listed.write_text(f"127.0.0.1:{a.port}\n127.0.0.1:{b.port}\n")
    web.proc.signal(signal.SIGHUP)
    said = web.proc.expect(rf"worker tcp://127\.0\.0\.1:{b.port} (\w+): credit")
    assert said[1] == "ready", said[0]  # its first READY: it was never here before
    assert web.proc.matches(r"barrier met: the 1 worker is ready"), web.proc.tail()


def test_a_settled_process_that_dies_is_not_said_to_be_0_in_a_row(caplog):
    """A process that served for 203 s and died: its first death, nothing in a row."""
    from types import SimpleNamespace

    from greenpipe.supervisor import Child, Supervisor

    supervisor = Supervisor(lambda index: [], {}, 1, stop_timeout=1, ready_timeout=1)
    child = Child(0, SimpleNamespace(pid=4242), started=time.monotonic() - 203)  # type: ignore[arg-type]
    child.serving.set(True)
    supervisor.slots[0] = child
    supervisor._exited((child, -9))
    assert (
        "web: process 0 (pid 4242) was killed by SIGKILL, after 203.0 s; "
        "starting another now" in caplog.text
    ), caplog.text
