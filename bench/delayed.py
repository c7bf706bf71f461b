"""Jobs that wait (issue 20): lateness, memory per scheduled job, the journal's size.

    python -m bench.delayed            # about 2 minutes
    python -m bench.delayed --quick    # a tiny run: checks that it all works

Real processes: ``bench/delayed_app.py`` served by greenpipe with 3 workers,
its journal on (JOURNAL_SYNC=none, the default). Measured:

- lateness: N jobs pushed with ``at=`` a random time up to 20 s ahead; each
  handler notes when it started against the exact time its job waited for.
  Idle, then again while wrk (or Locust) loads the same web with ordinary
  pushes. Early means started before its time: it must be 0.
- memory: the web's RSS before and after M jobs scheduled an hour ahead.
- the ordinary push path: a web holding 1,000 jobs due in an hour against a
  web holding none, rounds back to back (the order alternating): req/s
  ratio; and the journal's size while the loaded web writes many segments'
  worth (those jobs must not pin its compaction).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from bench import load, systems
from greenpipe.testing import PYTHON, ROOT, poll_until


def start(book: str) -> tuple[systems.Running, str]:
    """bench/delayed_app.py on a fresh journal, 3 workers: (running, journal dir)."""
    running = systems.Running("greenpipe, jobs that wait")
    worker = [PYTHON, str(ROOT / "server.py"), "--port", "0", "--handler",
              "bench.delayed_app:handlers"]  # fmt: skip
    ports = systems._workers(running, worker, r"listening on tcp://[^:]+:(\d+)",
                             env={"BENCH_DELAYED_DIR": book})  # fmt: skip
    journal = tempfile.mkdtemp(prefix="greenpipe-bench-delayed-")
    web = [PYTHON, "-m", "bench.delayed_app", "--port", "0", "--workers",
           ",".join(f"127.0.0.1:{port}" for port in ports), "--dead-letter",
           "/dev/null", "--journal-dir", journal]  # fmt: skip
    systems._web(running, web, r"serving http://[^:]+:(\d+)", "barrier met")
    return running, journal


def _post(url: str, payload: object) -> dict:
    request = urllib.request.Request(url, json.dumps(payload).encode(),
                                     {"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)


def schedule(url: str, count: int, spread: float, lead: float = 0.5) -> set[str]:
    """Push `count` jobs due at random between `lead` and `spread` s from each push."""
    rng, pushed = random.Random(count), set()
    while len(pushed) < count:
        chunk = min(500, count - len(pushed))
        now = time.time()
        dues = [now + rng.uniform(lead, spread) for _ in range(chunk)]
        pushed.update(_post(url + "/later", {"dues": dues})["ids"])
    return pushed


def _late(book: str) -> dict[str, tuple[float, float]]:
    """What the handlers noted: {job id: (due, started)} (the first run of each)."""
    runs: dict[str, tuple[float, float]] = {}
    for path in Path(book).glob("*.late"):
        for line in path.read_text().splitlines():
            job_id, due, started = line.split()
            runs.setdefault(job_id, (float(due), float(started)))
    return runs


def lateness(url: str, book: str, count: int, spread: float, load_s: float,
             connections: int) -> str:  # fmt: skip
    """Schedule `count` jobs (with load for `load_s` s if given); one report line."""
    result: list[load.LoadResult] = []
    loader = None
    if load_s:
        loader = threading.Thread(
            target=lambda: result.append(load.run(url + "/", connections, load_s))
        )
        loader.start()
    pushed = schedule(url, count, spread)
    runs = poll_until(lambda: {k: v for k, v in _late(book).items() if k in pushed},
                      lambda r: len(r) == len(pushed), spread + 60,
                      f"{len(pushed)} scheduled jobs run")  # fmt: skip
    if loader is not None:
        loader.join()
    late = sorted((started - due) * 1000 for due, started in runs.values())
    early = sum(1 for ms in late if ms < 0)
    under = (f"under {load.tool()} load ({result[0].ok_rps:,.0f} ordinary pushes/s "
             "on the same web)" if result else "idle")  # fmt: skip
    return (f"  - {len(pushed):,} jobs due at random up to {spread:g} s ahead, {under}: "
            f"{len(runs):,} ran, {early} early; started after their time by "
            f"{late[len(late) // 2]:.1f} ms (p50), {late[int(len(late) * 0.99)]:.1f} "
            f"ms (p99), {late[-1]:.1f} ms at most")  # fmt: skip


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _stats(url: str) -> dict:
    with urllib.request.urlopen(url + "/stats", timeout=10) as response:
        return json.load(response)


def _size(folder: str) -> int:
    return sum(
        path.stat().st_size for path in Path(folder).rglob("*") if path.is_file()
    )


def memory(args: argparse.Namespace, book: str) -> str:
    """M jobs an hour ahead on a fresh web: its RSS and its journal per job."""
    running, journal = start(book)
    try:
        pid = running.web[0].pid
        before, size_before = rss_kib(pid), _size(journal)
        pushed = len(schedule(running.url, args.waiting, 3600, lead=3000))
        waiting = _stats(running.url)["waiting"]
        grown = (rss_kib(pid) - before) * 1024
        owed = _size(journal) - size_before
    finally:
        running.stop()
        shutil.rmtree(journal, ignore_errors=True)
    return (f"  - {pushed:,} jobs scheduled an hour ahead ({waiting:,} waiting): "
            f"the web's RSS grew {grown / 2**20:.1f} MiB, {grown / pushed:,.0f} "
            f"bytes per scheduled job; the journal holds {owed / 2**20:.1f} MiB "
            f"for them ({owed / pushed:.0f} bytes each)")  # fmt: skip


def cost(args: argparse.Namespace, book: str) -> list[str]:
    """1,000 jobs due in an hour: the ordinary path beside them, the journal's size."""
    holding, journal = start(book)
    empty, _ = start(book)
    try:
        size_before = _size(journal)
        schedule(holding.url, 1_000, 3600, lead=3000)
        owed = _size(journal) - size_before
        lines = []
        rps: dict[str, list[float]] = {"holding": [], "empty": []}
        sizes: list[int] = []
        sampler_done = threading.Event()

        def sample() -> None:
            while not sampler_done.wait(0.2):
                sizes.append(_size(journal))

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            index = 0
            # A round may count nothing on a busy machine (Locust's start eats a
            # 2 s run): up to 2 more then, so that a ratio exists.
            while index < args.rounds or (
                index < args.rounds + 2 and not any(rps["empty"])
            ):
                order = ["holding", "empty"] if index % 2 == 0 else ["empty", "holding"]
                for name in order:
                    url = (holding if name == "holding" else empty).url
                    rps[name].append(load.run(url + "/", args.connections,
                                              args.seconds).ok_rps)  # fmt: skip
                index += 1
        finally:
            sampler_done.set()
            sampler.join()
        ratios = [a / b for a, b in zip(rps["holding"], rps["empty"], strict=True) if b]
        # No ratio when the load tool counted nothing (a starved machine): say
        # so, "-" as the other benchmarks print it, rather than lose the rest.
        ratio = (f"{statistics.median(ratios):.3f} (range {min(ratios):.3f}-"
                 f"{max(ratios):.3f})" if ratios else
                 f"- ({load.tool()} counted no request in any round: rerun on "
                 f"a quieter machine, or longer)")  # fmt: skip
        written = _stats(holding.url)["journal"]
        lines.append(
            f"  - ordinary pushes, {index} rounds of {args.seconds:g} s back to "
            f"back: {statistics.median(rps['holding']):,.0f} req/s with 1,000 jobs "
            f"waiting, {statistics.median(rps['empty']):,.0f} with none: ratio {ratio}"
        )
        lines.append(
            f"  - the journal of the web holding them, sampled every 0.2 s while "
            f"it wrote {written.get('bytes_written', 0) / 2**20:.0f} MiB in all: "
            f"{min(sizes) / 2**20:.1f}-{max(sizes) / 2**20:.1f} MiB on disk "
            f"({owed / 2**20:.1f} MiB of it the waiting jobs; "
            f"{written.get('carried', 0):,} jobs carried forward)"
        )
        return lines
    finally:
        holding.stop()
        empty.stop()
        shutil.rmtree(journal, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.delayed",
                                     description=__doc__.split("\n\n")[0])  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="tiny counts, 1 s rounds")
    parser.add_argument("--connections", type=int, default=50)
    args = parser.parse_args()
    args.count, args.spread = (200, 1.0) if args.quick else (10_000, 20.0)
    args.waiting = 500 if args.quick else 50_000
    # quick: 1 s rounds; a Locust run that short on a busy machine may count
    # nothing, and the ratio is then printed "-" (the suite checks the code)
    args.rounds, args.seconds = (1, 1.0) if args.quick else (10, 4.0)
    book = tempfile.mkdtemp(prefix="greenpipe-bench-late-")
    lines = ["Jobs that wait (python -m bench.delayed):"]
    try:
        running, journal = start(book)
        try:
            lines.append(lateness(running.url, book, args.count, args.spread, 0, 0))
            lines.append(lateness(running.url, book, args.count, args.spread,
                                  args.spread + 2, args.connections))  # fmt: skip
        finally:
            running.stop()
            shutil.rmtree(journal, ignore_errors=True)
        lines.append(memory(args, book))
        lines += cost(args, book)
    finally:
        shutil.rmtree(book, ignore_errors=True)
    print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
