"""/metrics: parsed by prometheus_client's own parser, checked by promtool if present."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import poll_until


def _scrape(web) -> tuple[str, dict]:
    status, headers, body = web.get("/metrics")
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return body, samples


def test_metrics_show_the_web_and_its_workers(start_worker, start_web, tmp_path):
    workers = [start_worker() for _ in range(3)]
    web = start_web(workers, heartbeat=0.1, heartbeat_timeout=1)
    for i in range(30):
        assert web.post("/jobs", {"n": i})[0] == 202
    web.wait_settled()

    def handled_total(_):
        _, samples = _scrape(web)
        return sum(v for (name, _), v in samples.items()
                   if name == "greenpipe_worker_handled_total")  # fmt: skip

    poll_until(lambda: handled_total(None), lambda n: n >= 30, 10,
               "the workers' heartbeats report 30 handled")  # fmt: skip
    text, samples = _scrape(web)
    assert samples[("greenpipe_jobs_accepted_total", ())] == 30
    assert samples[("greenpipe_jobs_acknowledged_total", ())] == 30
    assert samples[("greenpipe_job_ack_seconds_count", ())] == 30
    assert samples[("greenpipe_jobs_rejected_total", (("reason", "max_pending"),))] == 0
    for w in workers:
        name = f"tcp://127.0.0.1:{w.port}"
        assert (
            samples[("greenpipe_worker_state", (("state", "ready"), ("worker", name)))]
            == 1
        )
        assert samples[("greenpipe_worker_sent_total", (("worker", name),))] == 10
        assert (
            samples[("greenpipe_worker_handler_seconds_count", (("worker", name),))]
            == 10
        )
    assert '{"n"' not in text, "no job body in /metrics"


@pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed (apt-get install prometheus); "
    "the parser test above still runs",
)
def test_promtool_accepts_the_metrics(start_worker, start_web):
    web = start_web([start_worker()], heartbeat=0.1, heartbeat_timeout=1)
    for i in range(5):
        assert web.post("/jobs", {"n": i})[0] == 202
    web.wait_settled()
    text, _ = _scrape(web)
    checked = subprocess.run(["promtool", "check", "metrics"], input=text,
                             capture_output=True, text=True, timeout=30)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_metrics_can_be_turned_off(start_worker, start_web):
    web = start_web([start_worker()], metrics="no")
    assert web.get("/metrics")[0] == 404
