"""/dashboard: its sums (unit), its data and re-send (real processes), and the
page itself as headless Chromium renders it (skipped where Chromium is absent).
"""

from __future__ import annotations

import hashlib
import re
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest

from greenpipe.deadletter import DeadLetters
from greenpipe.history import History, percentile
from greenpipe.jobs import Envelope
from tests.support import ROOT, chromium, handled_ids, poll_until, render

STATIC = ROOT / "greenpipe" / "static"

# -- unit: the sums the page draws -----------------------------------------------


def test_percentile_reads_the_bucket_holding_the_quantile():
    bounds = (0.01, 0.1, 1.0)
    assert percentile(bounds, [0, 0, 0, 0], 0.5) is None, "no data, no figure"
    assert percentile(bounds, [10, 0, 0, 0], 0.99) == 0.01
    assert percentile(bounds, [50, 49, 1, 0], 0.5) == 0.01
    assert percentile(bounds, [50, 49, 1, 0], 0.99) == 0.1
    assert percentile(bounds, [50, 49, 0, 1], 1.0) == 1.0, "+Inf reads as the last"


def test_history_turns_counters_into_rates_per_worker():
    links = [SimpleNamespace(report={"acked": 0}) for _ in range(2)]
    latency = [0] * 15
    d = SimpleNamespace(accepted=0, acked=0, failed=0, resent=0, rejected=0,
                        workers=links, latency_counts=latency, pending=0,
                        in_flight=0, credit=20)  # fmt: skip

    def snapshot():  # a Snapshot's figures (History copies what it keeps)
        return SimpleNamespace(**{**vars(d), "latency_counts": tuple(latency)})

    now = [100.0]
    history = History(snapshot, keep=3, clock=lambda: now[0])  # type: ignore[arg-type]
    assert history.sample() is None, "the first sample only sets the baseline"
    d.accepted, d.acked = 40, 30
    links[0].report["acked"], links[1].report["acked"] = 20, 10
    latency[0] = 30  # all within the first bucket
    now[0] = 102.0
    sample = history.sample()
    assert sample is not None
    assert (sample["accepted"], sample["acked"]) == (20.0, 15.0)
    assert sample["workers"] == [10.0, 5.0]
    assert sample["p50"] == sample["p99"] == 0.001
    assert sample["credit"] == 20
    for _ in range(4):
        now[0] += 1
        history.sample()
    assert len(history.samples) == 3, "keeps the last `keep` samples"
    assert [s["t"] for s in history.since(105.0)] == [106.0]


def test_vendored_assets_match_their_pinned_hashes():
    table = (STATIC / "VENDORED.md").read_text()
    rows = re.findall(r"\| `([^`]+)` \|[^|]+\| ([\d.]+) \| `([0-9a-f]{64})` \|", table)
    assert {name for name, _, _ in rows} == {"uPlot.iife.min.js", "uPlot.min.css"}
    for name, version, digest in rows:
        data = (STATIC / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, f"{name} changed"
        if name.endswith(".js"):
            assert f"(v{version})" in data[:100].decode(), "version in the banner"


# -- real processes: data, switches, re-send ------------------------------------


def test_data_shows_workers_counters_and_samples(start_worker, start_web):
    workers = [start_worker() for _ in range(3)]
    web = start_web(workers)
    for i in range(30):
        assert web.post("/jobs", {"secret": f"body-{i}"})[0] == 202
    web.wait_settled()
    code, headers, page = web.get("/dashboard")
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    assert "dashboard/static/uPlot.iife.min.js" in page
    for asset in ("uPlot.iife.min.js", "uPlot.min.css", "dashboard.js"):
        assert web.get(f"/dashboard/static/{asset}")[0] == 200, asset
    data = poll_until(lambda: web.get("/dashboard/data")[2],
                      lambda d: d["samples"] and sum(d["samples"][-1]["workers"]) == 0
                      and d["acked"] == 30, 10,
                      "a sample after the 30 jobs were acknowledged")  # fmt: skip
    assert (data["barrier"], data["ready"], data["configured"]) == (True, 3, 3)
    assert [w["acked"] for w in data["workers"]] == [10, 10, 10]
    rates = [sum(s["workers"]) for s in data["samples"]]
    assert sum(rates) > 0, f"some sample saw jobs acknowledged: {rates}"
    later = web.get(f"/dashboard/data?since={data['samples'][-1]['t']}")[2]
    assert all(s["t"] > data["samples"][-1]["t"] for s in later["samples"])
    assert "body-" not in str(data), "no job body on the dashboard"


def test_dashboard_can_be_turned_off(start_worker, start_web):
    web = start_web([start_worker()], dashboard="no")
    assert web.get("/dashboard")[0] == 404
    assert web.get("/dashboard/data")[0] == 404


def _seed_dead_letter(path: Path) -> str:
    job = Envelope("feedfacecafe-0000000007", b"POST", b"/jobs", b"x=1",
                   b"application/json", b'{"n": 7}')  # fmt: skip
    job.attempt = 5
    DeadLetters(str(path)).write(job, "lost 5 times", "tcp://127.0.0.1:1")
    return job.id


def test_a_dead_letter_is_resent_from_the_file_once_per_click(
    start_worker, start_web, record_dir, tmp_path
):
    dead = tmp_path / "dead-letter.jsonl"
    old = _seed_dead_letter(dead)
    web = start_web([start_worker()], dead_letter=dead)
    listed = web.get("/dashboard/data")[2]["dead_letters"]
    assert [(r["id"], r["reason"]) for r in listed] == [(old, "lost 5 times")]
    assert "body" not in listed[0], "the list shows no body"

    path = f"/dashboard/dead/{old}/resend"
    code, _, body = web.post(path)
    assert code == 403 and "X-Greenpipe-Action" in body["detail"], body
    action = {"X-Greenpipe-Action": "resend"}
    code, _, first = web.post(path, headers=action)
    assert code == 202 and first["resent_from"] == old, first
    code, _, again = web.post(path, headers=action)
    assert (code, again["id"]) == (202, first["id"]), "a double click sends once"
    poll_until(lambda: handled_ids(record_dir), lambda ids: first["id"] in ids, 10,
               f"the re-sent job {first['id']} handled by the worker")  # fmt: skip
    assert web.stats()["accepted"] == 1
    assert web.get("/dashboard/data")[2]["redriven"] == 1
    code, _, missing = web.post("/dashboard/dead/nope-0000000001/resend",
                                headers=action)  # fmt: skip
    assert code == 404 and "dead-letter file" in missing["detail"], missing


def test_processes_sharing_a_port_each_answer_on_their_own_ops_port(
    start_worker, start_web
):
    web = start_web([start_worker()], web_processes=2, ops_port=0)
    found = web.proc.expect(r"own /metrics.*http://127\.0\.0\.1:(\d+)", times=2)
    ports = [int(m[1]) for m in web.proc.matches(r"own /metrics.*:(\d+)$")]
    assert len(set(ports)) == 2 and found, ports
    for _ in range(20):
        assert web.post("/jobs", {})[0] == 202
    assert web.get("/metrics")[0] == 421, "the shared port cannot speak for both"
    assert web.get("/dashboard/data")[0] == 421
    from greenpipe.testing import Web

    each = [Web(web.proc, port) for port in ports]
    pids = {w.get("/dashboard/data")[2]["pid"] for w in each}
    assert len(pids) == 2, "each ops port is one process"
    total = poll_until(lambda: sum(w.stats()["acked"] for w in each),
                       lambda n: n == 20, 10, "20 acknowledged over both")  # fmt: skip
    assert total == 20
    for w in each:
        assert w.get("/metrics")[0] == 200


def test_a_dead_letter_resent_on_two_processes_makes_one_job(
    start_worker, start_web, record_dir, tmp_path
):
    """Issue 31, item 2: a click on each process's page, and one on the shared
    port, make one job between them (an order charged once), marked in the file."""
    dead = tmp_path / "dead-letter.jsonl"
    old = _seed_dead_letter(dead)
    web = start_web([start_worker()], dead_letter=dead, web_processes=2, ops_port=0)
    web.proc.expect(r"own /metrics.*http://127\.0\.0\.1:(\d+)", times=2)
    ports = [int(m[1]) for m in web.proc.matches(r"own /metrics.*:(\d+)$")]
    from greenpipe.testing import Web

    each = [Web(web.proc, port) for port in ports]
    path, action = f"/dashboard/dead/{old}/resend", {"X-Greenpipe-Action": "resend"}
    answers = [w.post(path, headers=action) for w in each + each]
    assert [code for code, _, _ in answers] == [202] * 4, answers
    made = {body["id"] for _, _, body in answers}
    assert len(made) == 1, f"one job, whichever process is asked: {made}"
    accepted = sum(w.stats()["accepted"] for w in each)
    assert accepted == 1, f"{accepted} jobs made from one dead letter"
    code, _, body = web.post(path, headers=action)
    assert code == 421, f"the shared port cannot speak for both: {code} {body}"
    job_id = made.pop()
    poll_until(lambda: handled_ids(record_dir), lambda ids: job_id in ids, 10,
               f"the re-sent job {job_id} handled")  # fmt: skip
    listed = each[1].get("/dashboard/data")[2]["dead_letters"]
    assert [(r["id"], r.get("resent_as")) for r in listed] == [(old, job_id)], listed
    assert handled_ids(record_dir)[job_id] == 1


# -- the page in a real browser -----------------------------------------------------


def _rows(dom: str) -> dict[str, str]:
    return dict(re.findall(r'data-worker="([^"]+)" data-state="([^"]+)"', dom))


@pytest.mark.skipif(
    chromium() is None,
    reason="chromium is not installed (apt-get install chromium); the data tests "
    "above still run",
)
def test_the_page_shows_workers_ready_then_one_not_ready(start_worker, start_web):
    workers = [start_worker() for _ in range(3)]
    web = start_web(workers, heartbeat=0.1, heartbeat_timeout=1)
    for i in range(30):
        assert web.post("/jobs", {"n": i})[0] == 202
    web.wait_settled()
    url = f"http://127.0.0.1:{web.port}/dashboard"
    dom = render(url)
    assert int(re.search(r'data-updates="(\d+)"', dom)[1]) >= 2, "it polls"
    assert re.search(r'id="accepted">30<', dom), "the counters moved"
    assert re.search(r'id="ready">3<', dom)
    rows = _rows(dom)
    assert sorted(rows) == sorted(f"tcp://127.0.0.1:{w.port}" for w in workers)
    assert set(rows.values()) == {"ready"}, rows

    workers[1].proc.signal(signal.SIGTERM)
    web.wait_state(1, {"connecting", "lost"})
    dom = render(url)
    rows = _rows(dom)
    assert rows[f"tcp://127.0.0.1:{workers[1].port}"] != "ready", rows
    assert re.search(r'id="ready">2<', dom)


@pytest.mark.skipif(
    chromium() is None,
    reason="chromium is not installed (apt-get install chromium); the routes the "
    "buttons call are tested in tests/test_resend.py",
)
def test_the_page_re_sends_kept_jobs_and_cancels_a_backlog_by_name(
    start_worker, start_web, tmp_path
):
    """Issue 33: the dashboard acts on many, as `greenpipe jobs` does: typed
    in the page, clicked, answered beside the button; the jobs re-run once."""
    from tests.browser import Page

    flag = tmp_path / "card-fixed"
    web = start_web([start_worker()])
    failing = [web.post("/jobs", {"fail_unless": str(flag)})[2]["id"] for _ in range(3)]
    for job_id in failing:
        poll_until(lambda j=job_id: web.get(f"/jobs/{j}")[2].get("status"),
                   "failed".__eq__, 20, f"job {job_id} failed")  # fmt: skip
    later = [web.post("/jobs", {}, headers={"Greenpipe-Delay": "600"})[2]["id"]
             for _ in range(4)]  # fmt: skip
    flag.touch()
    with Page(f"http://127.0.0.1:{web.port}/dashboard") as page:
        page.wait_for("document.body.dataset.updates >= 1", "the page's first poll")
        page.run(
            "document.querySelector('#resend-many input[name=name]').value = '/nope'"
        )
        page.run("document.querySelector('#resend-many button').click()")
        said = page.wait_for(
            "document.querySelector('#resend-many output').dataset.status",
            "an answer to re-sending a name nothing has",
        )
        assert said == "200", said
        said = page.run("document.querySelector('#resend-many output').textContent")
        assert said == "0 re-sent, 0 already, 0 refused, 0 in doubt", said
        page.run(
            "document.querySelector('#resend-many input[name=name]').value = '/jobs'"
        )
        page.run(
            "document.querySelector('#resend-many output').removeAttribute('data-status')"
        )
        page.run("document.querySelector('#resend-many button').click()")
        page.wait_for("document.querySelector('#resend-many output').dataset.status",
                      "the re-send's answer")  # fmt: skip
        text = page.run("document.querySelector('#resend-many output').textContent")
        assert text.startswith("3 re-sent, 0 already"), text
        page.run("document.querySelector('#purge-many input[name=name]').value = '*'")
        page.run("document.querySelector('#purge-many button').click()")
        page.wait_for("document.querySelector('#purge-many output').dataset.status",
                      "the purge's answer")  # fmt: skip
        text = page.run("document.querySelector('#purge-many output').textContent")
        assert text.startswith("4 cancelled, 0 cancelling"), text
    for job_id in later:
        assert web.get(f"/jobs/{job_id}")[2]["status"] == "cancelled"
    kept = web.get("/failed")[2]["jobs"]
    new_ids = {job["resent_as"] for job in kept}
    assert len(new_ids) == 3, kept
    for new_id in new_ids:
        poll_until(lambda j=new_id: web.get(f"/jobs/{j}")[2].get("status"),
                   "done".__eq__, 20, f"the re-sent job {new_id} done")  # fmt: skip
