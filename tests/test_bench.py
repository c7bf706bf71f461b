"""The benchmark suite runs end to end on a tiny load (speed is not asserted)."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.support import PYTHON, ROOT

pytestmark = pytest.mark.timeout(300)


def test_bench_quick_runs_every_section():
    result = subprocess.run(
        [PYTHON, "-m", "bench", "--quick", "--no-write", "--systems", "greenpipe,plain"],
        cwd=ROOT, capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "| bare Flask/gevent (ceiling) |" in out and "| 1.00 |" in out
    row = re.search(
        r"\| greenpipe \(acknowledged\) \| [\d,]+ .*? \| (\d+) / (\d+) \|", out
    )
    assert row, out
    assert row[1] == row[2], (
        f"greenpipe accepted {row[1]} but its workers handled {row[2]}"
    )
    assert "| greenpipe -> plain PULL (at most once) |" in out
    for section in ("## Hot path", "## End-to-end latency", "## Memory"):
        assert section in out, out
    assert re.search(r"one worker process, no-op handler: [\d,]+ jobs/s", out)
    assert re.search(r"handler started: p50 [\d.]+ ms", out)
    assert re.search(r"bytes per job in flight: [\d,]+ bytes|needs wrk", out)
