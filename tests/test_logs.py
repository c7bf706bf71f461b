"""Log lines an operator can build a timeline from (issue 31, items 11 and 12).

Each line starts with its time (ISO-8601, UTC, milliseconds), or is one JSON
object with LOG_FORMAT=json; a worker's readiness line names its pid; a
failure that will be retried is logged with its traceback, once per run.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess

from greenpipe.testing import poll_until
from tests.support import PYTHON, ROOT, read_runs

TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
HANDLERS = "tests.retry_handlers:handlers"


def _record(message: str = "worker :1: listening", exc: bool = False):
    record = logging.LogRecord("greenpipe.worker", logging.INFO, __file__, 1,
                               message, None, None)  # fmt: skip
    record.created, record.msecs = 1796400367.123, 123.0  # 2026-12-04T16:06:07.123Z
    if exc:
        try:
            raise ConnectionError("upstream down")
        except ConnectionError as error:
            record.exc_info = (type(error), error, error.__traceback__)
    return record


def test_the_text_format_starts_with_the_utc_time_to_the_millisecond():
    from greenpipe.logs import TextFormatter

    line = TextFormatter().format(_record())
    assert (
        line == "2026-12-04T16:06:07.123Z INFO greenpipe.worker: worker :1: listening"
    )


def test_the_json_format_is_one_object_per_line_traceback_included():
    from greenpipe.logs import JsonFormatter

    line = JsonFormatter().format(_record(exc=True))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["time"] == "2026-12-04T16:06:07.123Z"
    assert (entry["level"], entry["logger"]) == ("INFO", "greenpipe.worker")
    assert entry["message"] == "worker :1: listening" and entry["pid"] > 0
    assert "ConnectionError: upstream down" in entry["exception"]


def test_a_worker_line_has_its_time_and_its_readiness_line_its_pid(start_worker):
    worker = start_worker()
    line = worker.proc.expect(r"listening on tcp://").string
    match = re.match(rf"{TIME} INFO greenpipe\.worker: worker :\d+: listening on "
                     r"tcp://\S+ \(pid (\d+),", line)  # fmt: skip
    assert match, line
    assert int(match[1]) == worker.proc.pid


def test_log_format_json_makes_every_line_an_object(start_worker, start_web):
    worker = start_worker(handler="greenpipe.handlers:log_job", log_format="json")
    web = start_web([worker], log_format="json")
    assert web.post("/jobs", {"n": 1})[0] == 202
    worker.proc.expect(r'"message": "worker :\d+: job \S+ attempt 1')
    for proc in (worker.proc, web.proc):
        entries = [json.loads(line) for line in proc.lines]
        assert entries and all(re.fullmatch(TIME, e["time"]) for e in entries)
        assert {e["pid"] for e in entries} == {proc.pid}, proc.name


def test_a_bad_setting_is_reported_in_json_too():
    """The line of a refused setting comes before the settings are read."""
    result = subprocess.run(
        [PYTHON, "server.py", "--port", "lots"], cwd=ROOT, capture_output=True,
        text=True, timeout=30, env={"LOG_FORMAT": "json", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    entry = json.loads(result.stderr.strip().splitlines()[-1])
    assert entry["level"] == "ERROR" and entry["message"].startswith("PORT:"), entry


def test_a_retried_failure_is_logged_with_its_traceback_once_per_run(
    start_worker, start_app, record_dir
):
    worker = start_worker(handler=HANDLERS)
    web = start_app([worker])
    code, _, body = web.post("/jobs/flaky", {"fail": 2})
    assert code == 202
    poll_until(lambda: read_runs(record_dir).get(body["id"], []),
               lambda runs: len(runs) == 3, 15, "three runs of the flaky job")  # fmt: skip
    worker.proc.expect(r"retry 2 of 3 in")
    for run in (1, 2):
        worker.proc.expect(rf"ConnectionError: upstream down \(run {run}\)$")
    assert len(worker.proc.matches(r"^Traceback \(most recent call last\)")) == 2, (
        worker.proc.tail(40)
    )
