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


@pytest.mark.inprocess
def test_figures_by_job_name_are_labelled_for_the_names_workers_run_only():
    """Issue 33: the ack latency and failures by job name, with a label per
    name the workers announce; a default handler's names get theirs up to
    OWN_LABELS, the rest are "other" (a name from user input cannot grow
    /metrics without bound)."""
    from greenpipe import metrics
    from greenpipe.books import NAMES_KEPT, Books, take
    from greenpipe.jobs import Envelope, Status

    books = Books()
    jobs = []
    names = [b"resize", b"mail"] + [b"u%d" % n for n in range(metrics.OWN_LABELS + 5)]
    for name in names:
        job = Envelope.new(b"", b"", b"", b"", b"", name=name)
        job.accepted_at = 0.0
        jobs.append(job)
    books.settled(jobs[:1], [(jobs[1], Status.FAILED, b"E: boom")], 0, "w", 0.004)
    books.settled(jobs[2:], [], 0, "w", 2.0)

    snapshot = take("web", books, [], 0.0)
    # A worker that announced resize and mail in its READY (greenpipe.routing).
    worker = type("W", (), {"report": {"serves": {"names": ["resize", "mail"]}}})()
    snapshot = snapshot.__class__(**{**{f: getattr(snapshot, f) for f in
                                        snapshot.__dataclass_fields__},
                                     "workers": [worker]})  # fmt: skip
    families = {
        f.name: f for f in metrics.Collector(lambda: snapshot)._by_name(snapshot)
    }
    latency = families["greenpipe_job_ack_by_name_seconds"]
    counts = {s.labels["job"]: s.value for s in latency.samples
              if s.name.endswith("_count")}  # fmt: skip
    assert counts["resize"] == 1 and counts["mail"] == 1, counts
    own = [n for n in counts if n.startswith("u")]
    assert len(own) == metrics.OWN_LABELS and counts[""] == 5, counts
    failed = {s.labels["job"]: s.value for s in
              families["greenpipe_jobs_failed_by_name"].samples}  # fmt: skip
    assert failed["mail"] == 1 and failed["resize"] == 0, failed
    assert len(books.by_name) <= NAMES_KEPT
