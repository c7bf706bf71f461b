"""Periodic jobs, every 1 s for 60 s: runs, and how late each started after its tick.

    python -m bench.schedule                  # 60 s (a minute and a few seconds)
    python -m bench.schedule --seconds 10

Starts one worker (handler bench.periodic_handlers:handlers, a job every
second) and ``greenpipe schedule`` (LOG_LEVEL=DEBUG: its line per tick maps
job id -> tick), lets them run --seconds, stops the scheduler (SIGTERM: it
drains) and prints JSON: ticks elapsed (whole seconds in the run), ticks
pushed, jobs run (distinct ids) and runs (with repeats), and the lateness of
each job's first run: handler started - tick time, p50/p99/max in ms.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

from greenpipe.testing import start_scheduler, start_worker

HANDLERS = "bench.periodic_handlers:handlers"
TICK = re.compile(r"schedule: beat@(\S+): job (\S+)")


def measure(seconds: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as folder:
        worker, port = start_worker("worker", 0, {"BENCH_PERIODIC": folder},
                                    handler=HANDLERS)  # fmt: skip
        try:
            scheduler = start_scheduler(HANDLERS, [f"127.0.0.1:{port}"],
                                        journal_dir=Path(folder) / "schedule",
                                        log_level="DEBUG")  # fmt: skip
            started = time.time()
            time.sleep(seconds)  # sleep-ok: the run's length
            stopped = time.time()
            scheduler.stop(10)
        finally:
            worker.stop(10)
        ticks = {m[2]: datetime.fromisoformat(m[1]).timestamp()
                 for m in scheduler.matches(TICK.pattern)}  # fmt: skip
        runs = [line.split() for path in Path(folder).glob("*.runs")
                for line in path.read_text().splitlines()]  # fmt: skip
    first: dict[str, float] = {}
    for job_id, at in runs:
        first[job_id] = min(float(at), first.get(job_id, float("inf")))
    late_ms = sorted((at - ticks[job_id]) * 1000 for job_id, at in first.items())
    if len(late_ms) < 2:
        raise SystemExit(f"bench.schedule: {len(late_ms)} runs; give more --seconds")
    cuts = statistics.quantiles(late_ms, n=100, method="inclusive")
    return {
        "seconds": seconds,
        "ticks_elapsed": int(stopped) - int(started),
        "ticks_pushed": len(ticks),
        "jobs_run": len(first),
        "runs": len(runs),
        "unknown_jobs": len(set(first) - set(ticks)),
        "lateness_ms": {"p50": round(statistics.median(late_ms), 2),
                        "p99": round(cuts[98], 2), "max": round(late_ms[-1], 2)},
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.schedule", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    print(json.dumps(measure(args.seconds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
