"""Load generators for the benchmarks: wrk when installed, else Locust (and say so)."""

from __future__ import annotations

import csv
import math
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from greenpipe.testing import ROOT


@dataclass
class LoadResult:
    tool: str
    requests: int  # answered
    ok: int  # answered 2xx
    seconds: float
    p50_ms: float | None  # None: the run was too short for the tool to say
    p99_ms: float | None

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def ok_rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


def tool() -> str:
    """ "wrk" when it is on PATH, else "locust" (the fallback, itself tested)."""
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
        done = subprocess.run(
            [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest" / "locustfile.py"),
             "--headless", "-u", str(connections), "-r", str(connections), "-t", f"{max(1, math.ceil(seconds))}s",
             "--host", f"{parts.scheme}://{parts.netloc}", "--csv", prefix, "--post-weight", "0",
             "--skip-log-setup", "--ab-progress", "0"],
            capture_output=True, text=True, timeout=seconds + 60, cwd=ROOT,
        )  # fmt: skip
        try:
            with open(f"{prefix}_stats.csv") as file:
                rows = list(csv.DictReader(file))
        except OSError:
            raise RuntimeError(
                f"Locust wrote no statistics (exit {done.returncode}); its output "
                f"ends:\n{done.stderr[-1500:]}"
            ) from None
    return from_locust_stats(rows, seconds)


def from_locust_stats(rows: list[dict[str, str]], seconds: float) -> LoadResult:
    """A LoadResult from the rows of Locust's ``*_stats.csv``.

    Locust writes "N/A" for a percentile it could not compute (no request
    finished, e.g. a 1 s warm-up on a slow machine): that becomes None, which
    the report shows as "too short to measure"; it is never a crash.
    """
    row = next((r for r in rows if r.get("Name") == "Aggregated"), None)
    if row is None:
        return LoadResult("locust", 0, 0, seconds, None, None)
    requests = _count(row.get("Request Count"))
    failed = _count(row.get("Failure Count"))
    rps = _number(row.get("Requests/s")) or 0.0
    return LoadResult(
        "locust", requests, requests - failed, requests / rps if rps else seconds,
        _number(row.get("50%")), _number(row.get("99%")),
    )  # fmt: skip


def _number(text: str | None) -> float | None:
    try:
        value = float(text or "")
    except ValueError:  # "N/A", "", or something Locust may print one day
        return None
    return value if math.isfinite(value) else None


def _count(text: str | None) -> int:
    value = _number(text)
    return int(value) if value is not None else 0


def run(url: str, connections: int, seconds: float) -> LoadResult:
    return (
        wrk(url, connections, seconds)
        if tool() == "wrk"
        else locust(url, connections, seconds)
    )
