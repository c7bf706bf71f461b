"""Short real runs of the Locust load tools against real web and worker processes."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tests.support import PYTHON, ROOT, free_port, read_records

pytestmark = pytest.mark.timeout(180)


def loadtest(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", "loadtest", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def system(start_worker, start_web):
    workers = [start_worker() for _ in range(3)]
    return start_web(workers), workers


def test_ab_run_stops_at_exactly_n_and_agrees_with_stats_and_records(
    system, record_dir
):
    web, workers = system
    before = web.stats()
    result = loadtest("-n", "601", "-c", "12", "--json", web.url + "/")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    summary, check = report["summary"], report["delivery"]
    assert summary["requests"] == 601 and summary["failures"] == 0
    assert summary["exact"] is True
    assert check["accepted"] == check["acked"] == 601 and check["missing"] == 0
    after = web.stats()
    assert after["accepted"] - before["accepted"] == 601
    records = read_records(record_dir)
    for worker, row in zip(workers, check["workers"], strict=True):
        assert row["acked"] == len(records[str(worker.port)]), (row, worker.port)
    handled = [job_id for entries in records.values() for job_id, _ in entries]
    assert len(handled) == len(set(handled)) == 601
    assert "progress: " in result.stderr
    assert "ERROR" not in result.stderr, result.stderr[-2000:]  # a passing run: none


def test_ab_text_summary_and_verdict(system):
    web, _ = system
    result = loadtest("-n", "300", "-c", "10", web.url + "/")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Complete requests:      300 (exactly -n)" in out
    assert "Failed requests:        0" in out
    assert "Requests per second:" in out and "p99" in out
    assert "largest/smallest share: 1.000" in out
    assert "Verdict: all 300 accepted jobs acknowledged" in out


def test_ab_with_several_locust_processes_is_still_exact(system):
    web, _ = system
    result = loadtest(
        "-n", "301", "-c", "10", "--processes", "2", "--json", web.url + "/"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["summary"]["requests"] == 301
    assert report["delivery"]["accepted"] == 301 == report["delivery"]["acked"]
    assert "ERROR" not in result.stderr, result.stderr[-2000:]


def test_several_locust_processes_need_no_fixed_port(system):
    """Locust's master listened on 5557 for every run: a second run on the
    machine could not bind, and its workers joined the first run's master
    (309 counted for -n 301). Each run now binds a port the OS picks."""
    web, _ = system
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with contextlib.suppress(OSError):  # if another holds it: the same case
            taken.bind(("0.0.0.0", 5557))
            taken.listen()
        result = loadtest(
            "-n", "40", "-c", "4", "--processes", "2", "--json", web.url + "/"
        )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["summary"]["requests"] == 40
    assert report["delivery"]["accepted"] == 40 == report["delivery"]["acked"]


def test_ab_against_a_stopped_web_fails_clearly():
    port = free_port()
    result = loadtest("-n", "10", "-c", "1", f"http://127.0.0.1:{port}/")
    assert result.returncode == 2
    assert f"cannot reach http://127.0.0.1:{port}" in result.stderr
    assert "is web.py running?" in result.stderr


def test_ab_counts_503s_as_failures_by_kind(start_worker, start_web):
    worker = start_worker()
    web = start_web([worker])
    worker.proc.signal(signal.SIGKILL)
    web.wait_state(0, ["lost"], timeout=5)
    result = loadtest("-n", "20", "-c", "2", web.url + "/")
    assert result.returncode == 1
    assert "Failed requests:        20" in result.stdout
    assert "expected 202, got 503: 20" in result.stdout


def test_locustfile_runs_as_is_headless(system):
    web, _ = system
    result = subprocess.run(
        [PYTHON, "-m", "locust", "-f", "loadtest/locustfile.py", "--headless",
         "-u", "4", "-r", "4", "--host", web.url, "--ab-requests", "40", "--only-summary"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert web.wait_settled()["accepted"] == 40
    # Users that found no ticket left stop before Locust does: no user of theirs
    # is half-gone when it stops them ("didn't have proper args").
    assert "ERROR" not in result.stderr, result.stderr[-2000:]


def test_scenario_draws_the_chart_and_loses_nothing(tmp_path: Path):
    # 12 s: 6 s after the restart, so that a restarted worker that is slow to
    # start on a busy machine still has samples after it listens (9 s had none)
    out = tmp_path / "scenario"
    result = subprocess.run(
        [PYTHON, "-m", "loadtest.scenario", "--duration", "12", "--kill-at", "3",
         "--restart-at", "6", "--users", "8", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    report = json.loads((out / "scenario.json").read_text())
    assert report["lost"] == 0 and report["http_failures"] == 0, report
    # What the run shows, not how fast (a figure, printed; a loaded machine
    # may take the whole run to reach 90% of the earlier rate): the load went
    # on, every worker handled jobs, and the victim came back into rotation.
    assert report["accepted"] > 0 and "absorbed_s" in report, report
    assert all(count > 0 for count in report["per_worker"].values()), report
    assert report["rejoined_s"] is not None, report
    assert all(code == 0 for code in report["exit_codes"].values()), report
    png = (out / "scenario.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    from PIL import Image

    with Image.open(out / "scenario.png") as image:
        assert image.size[0] > 600 and image.size[1] > 300
