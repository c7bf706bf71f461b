"""Load generators for the benchmarks: wrk when installed, else Locust (and say so)."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tests.support import ROOT


@dataclass
class LoadResult:
    tool: str
    requests: int  # answered
    ok: int  # answered 2xx
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def ok_rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


def tool() -> str:
    return "wrk" if shutil.which("wrk") else "locust"


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * _UNITS[unit]


def wrk(url: str, connections: int, seconds: float) -> LoadResult:
    """One wrk thread, keep-alive connections, GET url."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", url],
        capture_output=True, text=True, check=True, timeout=seconds + 60,
    ).stdout  # fmt: skip
    total, took = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s)", out).group(1, 2)
    unit = re.search(r"\d+ requests in [\d.]+(us|ms|s)", out).group(1)
    duration = float(took) * _UNITS[unit] / 1000
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    failed = int(bad.group(1)) if bad else 0
    p50 = _ms(re.search(r"\s50%\s+([\d.]+(?:us|ms|s))", out).group(1))
    p99 = _ms(re.search(r"\s99%\s+([\d.]+(?:us|ms|s))", out).group(1))
    answered = int(total) - (int(errors.group(4)) if errors else 0)
    return LoadResult("wrk", answered, answered - failed, duration, p50, p99)


def locust(url: str, connections: int, seconds: float) -> LoadResult:
    """The fallback: Locust headless (a Python client: it saturates before the web)."""
    parts = urlsplit(url)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = str(Path(tmp) / "run")
        subprocess.run(
            [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest" / "locustfile.py"),
             "--headless", "-u", str(connections), "-r", str(connections), "-t", f"{seconds:g}s",
             "--host", f"{parts.scheme}://{parts.netloc}", "--csv", prefix, "--post-weight", "0",
             "--skip-log-setup", "--ab-progress", "0"],
            capture_output=True, text=True, timeout=seconds + 60, cwd=ROOT,
        )  # fmt: skip
        with open(f"{prefix}_stats.csv") as file:
            row = next(r for r in csv.DictReader(file) if r["Name"] == "Aggregated")
    requests = int(row["Request Count"])
    failed = int(row["Failure Count"])
    rps = float(row["Requests/s"])
    return LoadResult(
        "locust", requests, requests - failed, requests / rps if rps else seconds,
        float(row["50%"]), float(row["99%"]),
    )  # fmt: skip


def run(url: str, connections: int, seconds: float) -> LoadResult:
    return (
        wrk(url, connections, seconds)
        if tool() == "wrk"
        else locust(url, connections, seconds)
    )
