"""The benchmark suite runs end to end on a tiny load (speed is not asserted).

The throughput run hides wrk and redis-server from PATH, so the fallback a
fresh machine takes (Locust) is exercised on every machine; the other parts
use wrk where it is installed, and wrk's own parser has a test of its own.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from bench import load
from tests.support import OPTIONAL_TOOLS, PYTHON, ROOT, path_without

pytestmark = pytest.mark.timeout(300)


def _bench_quick(
    tmp_path, sections: str, systems: str = "greenpipe,plain", hide_tools: bool = False
) -> str:
    """`python -m bench --quick` for `sections`: its report. With `hide_tools`
    wrk and redis are hidden, as on a fresh machine (Locust drives the load);
    otherwise wrk drives it where installed (a C client: no Locust start, a
    second of CPU, per measurement)."""
    env = dict(os.environ)
    if hide_tools:
        env["PATH"] = path_without(OPTIONAL_TOOLS, tmp_path / "bin")
    result = subprocess.run(
        [PYTHON, "-m", "bench", "--quick", "--no-write", "--systems", systems,
         "--sections", sections, "--connections", "5"],
        cwd=ROOT, capture_output=True, text=True, timeout=280, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    tool = (
        "locust"
        if hide_tools or shutil.which("wrk", path=env["PATH"]) is None
        else "wrk"
    )
    assert f"load from {tool}" in out, out[:800]
    assert ("wrk is not installed" in out) == (tool == "locust"), out[:800]
    assert "- failed:" not in out, out
    return out


# The smoke run in four parts, so that they run side by side under xdist
# (one part after another they took about 115 s on the 2-core machine).
# Marked `bench`: `make test-bench` runs them (CI too), not `make test`: they
# check that the benchmarks run, and took 4.5 of the full run's 14 CPU minutes.
# Figures are not asserted: on a busy machine a 2 s Locust run can count
# nothing, and a ratio to a system that counted nothing is printed "-".
RATIO = r"([\d.]+|-)"


@pytest.mark.bench
def test_bench_quick_throughput_and_paired_without_optional_tools(tmp_path):
    out = _bench_quick(tmp_path, "macro,paired", hide_tools=True)
    assert re.search(
        r"\| bare Flask/gevent \(ceiling\) \| [^|]+ \| (1\.00|-) \|", out
    ), out
    row = re.search(
        r"\| greenpipe \(acknowledged\) \| [\d,]+ .*? \| (\d+) / (\d+) \|", out
    )
    assert row, out
    assert row[1] == row[2], (
        f"greenpipe accepted {row[1]} but its workers handled {row[2]}"
    )
    assert "| greenpipe -> plain PULL (at most once) |" in out
    assert "## Paired: greenpipe against the ceiling" in out, out


@pytest.mark.bench
def test_bench_quick_journal_and_observability(tmp_path):
    out = _bench_quick(tmp_path, "journal,observe", systems="greenpipe")
    assert "## Journal" in out and "## Observability" in out, out
    assert re.search(r"on, scraped and watched once a second: [\d,]+ req/s, ratio "
                     rf"to bare {RATIO}, to metrics and dashboard off {RATIO}", out), out  # fmt: skip


@pytest.mark.bench
def test_bench_quick_curve_and_scale(tmp_path):
    out = _bench_quick(tmp_path, "curve,scale", systems="greenpipe")
    assert "## CURVE" in out and "## Several web processes" in out, out
    assert re.search(
        rf"CURVE on: [\d,]+ req/s, ratio to bare {RATIO}, to CURVE off", out
    )
    assert re.search(r"gunicorn -k gevent -w 2: [\d,]+ req/s, ratio to bare", out), out


@pytest.mark.bench
def test_bench_quick_retries_hot_path_latency_memory(tmp_path):
    out = _bench_quick(
        tmp_path, "retries,micro,latency,memory", systems="greenpipe", hide_tools=True
    )
    for section in ("## Retries", "## Hot path", "## End-to-end latency", "## Memory"):
        assert section in out, out
    assert re.search(r"one worker process, no-op handler: [\d,]+ jobs/s", out)
    assert re.search(r"handler started: p50 [\d.]+ ms", out)
    assert "bytes per job in flight: needs wrk" in out


@pytest.mark.bench
def test_bench_delayed_quick_reports_lateness_memory_and_cost(tmp_path):
    result = subprocess.run([PYTHON, "-m", "bench.delayed", "--quick"], cwd=ROOT,
                            capture_output=True, text=True, timeout=200)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    ran = re.findall(r"(\d+) jobs due at random .*?: (\d+) ran, (\d+) early", out)
    assert len(ran) == 2 and all(a == b and e == "0" for a, b, e in ran), out
    assert re.search(r"under (locust|wrk) load", out), out
    assert re.search(r"[\d,]+ bytes per scheduled job", out), out
    assert re.search(rf"with none: ratio {RATIO}", out), out
    assert re.search(r"[\d.]+-[\d.]+ MiB on disk", out), out


def test_locust_stats_without_percentiles_are_reported_not_fatal():
    """Locust writes N/A for a percentile no finished request gave (issue 9)."""
    na = {"Name": "Aggregated", "Request Count": "0", "Failure Count": "0",
          "Requests/s": "0", "50%": "N/A", "99%": "N/A"}  # fmt: skip
    result = load.from_locust_stats([na], 1.0)
    assert (result.requests, result.ok, result.p50_ms, result.p99_ms) == (
        0,
        0,
        None,
        None,
    )
    assert result.rps == 0.0
    ok = {**na, "Request Count": "400", "Failure Count": "3", "Requests/s": "200",
          "50%": "4", "99%": "27"}  # fmt: skip
    result = load.from_locust_stats([{"Name": "/", **ok}, ok], 2.0)
    assert (result.requests, result.ok, result.seconds) == (400, 397, 2.0)
    assert (result.p50_ms, result.p99_ms) == (4.0, 27.0)
    assert load.from_locust_stats([], 1.0).requests == 0  # no Aggregated row at all


@pytest.mark.skipif(
    shutil.which("wrk") is None,
    reason="wrk is not installed (apt-get install wrk); the Locust fallback is tested above",
)
def test_wrk_load_against_the_bare_app():
    from bench import systems

    running = systems.bare()
    try:
        result = load.wrk(running.url + "/", 4, 1.0)
    finally:
        running.stop()
    assert result.tool == "wrk" and result.ok > 0, result
    assert result.p50_ms is not None and result.p99_ms >= result.p50_ms
