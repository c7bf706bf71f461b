"""greenpipe's benchmarks: throughput against the Flask/gevent ceiling, and more.

    python -m bench                        # everything, a few minutes (make bench)
    python -m bench --sections macro --systems bare,greenpipe --rounds 5
    python -m bench --quick                # a tiny run: checks that it all works

Sections:
  macro    each system on free ports, fresh for every run, driven by wrk (or
           Locust if wrk is missing: then the client, not the web, is the
           limit), systems alternating in rounds; requests/s median and range,
           ratio to the bare Flask/gevent app, p50/p99, web CPU per request,
           accepted vs handled (the workers' own counts), per-worker split
  paired   bare and greenpipe running side by side, measured back to back in
           alternating order: the steadiest ratio a noisy machine can give
  journal  the journal off, none (default) and batch against bare, back to
           back; bytes written per job and the journal's size after the run;
           the result store on (default) and off
  observe  /metrics and /dashboard off, and on while scraped and watched once
           a second, against bare, back to back
  curve    CURVE on the worker links off and on, against bare, back to back
  scale    1, 2 and 3 web processes, gunicorn -k gevent -w 2, and workers on
           3 hosts (network namespaces; skipped without root/ip/iptables)
  micro    the hot path on its own (python -m bench.micro)
  latency  request sent -> handler started at 50% of greenpipe's peak
  memory   web RSS across a 100,000-request run; bytes per job in flight

The table goes to stdout and to bench/results/<date>-<commit>.md. These are
measurements on a shared, noisy machine: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench import load, systems
from greenpipe.testing import PYTHON, ROOT

RESULTS = ROOT / "bench" / "results"
TICK_US = 1e6 / 100  # /proc clock ticks are 10 ms (USER_HZ = 100)


@dataclass
class Sample:
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    cpu_us: float
    accepted: int
    handled: int | None
    split: dict[str, int] = field(default_factory=dict)
    catch_up_s: float | None = 0.0


def _accepted(running: systems.Running, result: load.LoadResult) -> int:
    """What the web(s) accepted, from their own stop lines; else the 2xx count."""
    lines = running.web[0].matches(r"stopped; accepted (\d+)")
    return sum(int(m[1]) for m in lines) if lines else result.ok


def measure(name: str, connections: int, seconds: float, catch_up: float) -> Sample:
    running = systems.SYSTEMS[name]()
    try:
        load.run(running.url + "/", connections, 1.0)  # warm up: connections, caches
        ticks = running.web_ticks()
        result = load.run(running.url + "/", connections, seconds)
        cpu_us = (running.web_ticks() - ticks) * TICK_US / max(1, result.requests)
        waited, _ = systems.wait_caught_up(running, result.ok, catch_up)
        counted = running.handled_live()  # a queue system: Redis counts as it runs
    finally:
        stopped = running.stop()  # greenpipe: the workers' own counts, after a drain
    handled, split = counted or stopped or (None, {})
    return Sample(
        result.ok_rps, result.p50_ms, result.p99_ms, cpu_us,
        _accepted(running, result), handled, split, waited,
    )  # fmt: skip


def macro(
    names: list[str], rounds: int, connections: int, seconds: float, catch_up: float
):
    samples: dict[str, list[Sample]] = {name: [] for name in names}
    for round_ in range(rounds):
        for name in names:
            sample = measure(name, connections, seconds, catch_up)
            samples[name].append(sample)
            print(
                f"  round {round_ + 1}: {name:<10} {sample.rps:8.0f} req/s",
                file=sys.stderr,
            )
    return samples


def macro_table(samples: dict[str, list[Sample]], skipped: dict[str, str]) -> list[str]:
    """One row per system. The ratio is the median over rounds of (system / bare
    in the same round): neighbours in time share the machine's mood."""
    bare = samples.get("bare")
    rows = [
        "| system | requests/s (median, range) | ratio to bare | p50 ms | p99 ms | web CPU µs/req "
        "| accepted / handled | per worker | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in samples.items():
        median = statistics.median(s.rps for s in runs)
        ratios = [
            r.rps / b.rps for r, b in zip(runs, bare or [], strict=False) if b.rps
        ]
        ratio = f"{statistics.median(ratios):.2f}" if ratios else "-"
        last = runs[-1]
        handled = "-" if last.handled is None else str(last.handled)
        split = " / ".join(str(v) for _, v in sorted(last.split.items())) or "-"
        notes = []
        if last.catch_up_s is None:
            notes.append(
                f"workers not caught up {handled} of {last.accepted} after the wait"
            )
        elif last.catch_up_s > 1:
            notes.append(f"workers caught up {last.catch_up_s:.0f} s after the load")
        rows.append(
            f"| {LABELS[name]} | {median:,.0f} "
            f"({min(s.rps for s in runs):,.0f}-{max(s.rps for s in runs):,.0f}) | {ratio} | "
            f"{_median_ms(s.p50_ms for s in runs)} | "
            f"{_median_ms(s.p99_ms for s in runs)} | "
            f"{statistics.median(s.cpu_us for s in runs):.0f} | {last.accepted} / {handled} | "
            f"{split} | {'; '.join(notes)} |"
        )
    for name, why in skipped.items():
        rows.append(f"| {LABELS[name]} | skipped: {why} | | | | | | | |")
    return rows


def _median_ms(values) -> str:
    """Median of the runs that measured it; "n/a" when none did (too short)."""
    known = [v for v in values if v is not None]
    return f"{statistics.median(known):.1f}" if known else "n/a (run too short)"


LABELS = {
    "bare": "bare Flask/gevent (ceiling)",
    "greenpipe": "greenpipe (acknowledged)",
    "plain": "greenpipe -> plain PULL (at most once)",
    "multi": "greenpipe, 2 web processes (SO_REUSEPORT)",
    "celery": "Flask + Celery on Redis",
    "rq": "Flask + RQ on Redis",
}


def _json_of(argv: list[str], timeout: float) -> dict:
    out = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    if out.returncode != 0:
        raise SystemExit(f"bench: {' '.join(argv[2:])} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def paired(pairs: int, connections: int, seconds: float) -> list[str]:
    """bare and greenpipe both running, measured back to back, order alternating.

    On a shared machine the speed drifts by tens of percent over minutes; two
    runs a few seconds apart see nearly the same machine, so the median of the
    pair ratios is the steadiest figure this box can give.
    """
    bare, gp = systems.bare(), systems.greenpipe()
    ratios, cpu = [], {"bare": [], "greenpipe": []}
    try:
        for index in range(pairs):
            order = [("bare", bare), ("greenpipe", gp)]
            if index % 2:
                order.reverse()
            rps = {}
            for name, running in order:
                ticks = running.web_ticks()
                result = load.run(running.url + "/", connections, seconds)
                rps[name] = result.ok_rps
                cpu[name].append(
                    (running.web_ticks() - ticks) * TICK_US / max(1, result.requests)
                )
            if rps["bare"]:  # a load tool that measured nothing gives no ratio
                ratios.append(rps["greenpipe"] / rps["bare"])
    finally:
        gp.stop()
        bare.stop()
    if not ratios:
        return [f"- greenpipe / bare: no pair measured any request ({load.tool()} runs "
                f"of {seconds:g} s were too short); run longer (--seconds)"]  # fmt: skip
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    return [
        f"- greenpipe / bare, {pairs} back-to-back pairs of {seconds:g} s: median ratio "
        f"{statistics.median(ratios):.2f} (quartiles {quartiles[0]:.2f}-{quartiles[2]:.2f}); "
        f"web CPU per request {statistics.median(cpu['greenpipe']):.0f} µs against "
        f"{statistics.median(cpu['bare']):.0f} µs",
    ]


def rounds(
    running: dict[str, systems.Running],
    pairs: int,
    connections: int,
    seconds: float,
) -> dict[str, dict[str, list[float]]]:
    """Measure every running system back to back, the order rotating each round.

    Each ratio then compares neighbours in time. Per system: req/s, p99 (ms)
    and web CPU per request (µs), one value per round.
    """
    figures = {name: {"rps": [], "p99": [], "cpu": []} for name in running}
    names = list(running)
    for index in range(pairs):
        order = names[index % len(names) :] + names[: index % len(names)]
        for name in order:
            ticks = running[name].web_ticks()
            result = load.run(running[name].url + "/", connections, seconds)
            figures[name]["rps"].append(result.ok_rps)
            figures[name]["cpu"].append(
                (running[name].web_ticks() - ticks) * TICK_US / max(1, result.requests)
            )
            if result.p99_ms is not None:
                figures[name]["p99"].append(result.p99_ms)
    return figures


def compare(
    figures: dict[str, dict[str, list[float]]], labels: dict[str, str], base: str
) -> list[str]:
    """One line per system: req/s, ratio to bare and to `base`, p99, CPU/request."""

    def ratio(name: str, other: str) -> str:
        pairs_ = [a / b for a, b in zip(figures[name]["rps"], figures[other]["rps"],
                                        strict=True) if b]  # fmt: skip
        return f"{statistics.median(pairs_):.3f}" if pairs_ else "-"

    def median(name: str, key: str) -> float:
        values = figures[name][key]
        return statistics.median(values) if values else float("nan")

    lines = []
    for name, label in labels.items():
        lines.append(
            f"  - {label}: {median(name, 'rps'):,.0f} req/s, ratio to bare "
            f"{ratio(name, 'bare')}, to {labels[base]} {ratio(name, base)}, p99 "
            f"{median(name, 'p99'):.1f} ms ({median(name, 'p99') / median('bare', 'p99'):.2f}x "
            f"bare's), web CPU {median(name, 'cpu'):.0f} µs per request"
        )
    return lines


def journal(
    pairs: int, connections: int, seconds: float, quick: bool = False
) -> list[str]:
    """The journal's cost: off, none (the default) and batch against the ceiling;
    and the result store's (the default, beside the journal) against none."""
    running = {"bare": systems.bare()}
    for mode in ("off", "none", "batch"):
        running[mode] = systems.greenpipe(journal=mode)
    running["unstored"] = systems.greenpipe(web_flags=("--result-store", "off"))
    try:
        figures = rounds(running, pairs, connections, seconds)
        report = {
            mode: _stats_of(running[mode].url)["journal"] for mode in ("none", "batch")
        }
    finally:
        for each in running.values():
            each.stop()
    lines = [f"- {pairs} rounds of {seconds:g} s, the five systems back to back:"]
    lines += compare(figures, {"off": "journal off", "none": "journal none (default)",
                               "batch": "journal batch (fdatasync per group)"},
                     "off")  # fmt: skip
    lines += compare(figures, {"unstored": "journal none, RESULT_STORE=off",
                               "none": "journal none, the result store on (default)"},
                     "unstored")  # fmt: skip
    for mode in ("none", "batch"):
        info = report[mode]
        per_job = info["bytes_written"] / max(1, info["jobs_written"])
        lines.append(
            f"  - {mode}: {info['jobs_written']:,} jobs journaled in {info['groups']:,} "
            f"group commits, {per_job:.0f} bytes per job written, "
            f"{info['bytes_on_disk']:,} bytes on disk after the run"
        )
    return lines


def observe(
    pairs: int, connections: int, seconds: float, quick: bool = False
) -> list[str]:
    """/metrics and /dashboard: off, and on while being watched, against the ceiling.

    "watched": /metrics and /dashboard/data fetched once a second during the
    rounds, as a Prometheus at a 1 s interval and one open dashboard tab do.
    """
    off = ("--metrics", "no", "--dashboard", "no")
    running = {"bare": systems.bare(), "off": systems.greenpipe(web_flags=off),
               "on": systems.greenpipe()}  # fmt: skip
    watched = running["on"].url
    stop = threading.Event()
    scrapes = [0]

    def watch() -> None:
        while not stop.wait(1.0):
            for path in ("/metrics", "/dashboard/data"):
                with urllib.request.urlopen(watched + path, timeout=5) as response:
                    response.read()
                scrapes[0] += 1

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        figures = rounds(running, pairs, connections, seconds)
    finally:
        stop.set()
        watcher.join(10)
        for each in running.values():
            each.stop()
    lines = [f"- {pairs} rounds of {seconds:g} s, the three systems back to back; "
             f"{scrapes[0]} scrapes of /metrics and /dashboard/data during them:"]  # fmt: skip
    lines += compare(figures, {"off": "metrics and dashboard off",
                               "on": "on, scraped and watched once a second"},
                     "off")  # fmt: skip
    return lines


def curve(
    pairs: int, connections: int, seconds: float, quick: bool = False
) -> list[str]:
    """CURVE on the worker links, off and on, against the ceiling."""
    worker_flags, web_flags = systems.curve_flags()
    running = {"bare": systems.bare(), "off": systems.greenpipe(),
               "on": systems.greenpipe(worker_flags=worker_flags,
                                       web_flags=web_flags)}  # fmt: skip
    try:
        figures = rounds(running, pairs, connections, seconds)
    finally:
        for each in running.values():
            each.stop()
    lines = [f"- {pairs} rounds of {seconds:g} s, the three systems back to back:"]
    lines += compare(figures, {"off": "CURVE off", "on": "CURVE on"}, "off")
    return lines


def retries(
    pairs: int, connections: int, seconds: float, quick: bool = False
) -> list[str]:
    """Retries: a handler without a policy, with one unused, and 10% failing once.

    The path with no failure must cost nothing measurable; with 10% of jobs
    failing once (retried after 0.1 s, no jitter), throughput, and how late
    each retry ran against the time asked (the web's timer, then a worker).
    """
    handler = "bench.retry_handlers:handlers"
    book = tempfile.mkdtemp(prefix="greenpipe-bench-retries-")
    running = {"bare": systems.bare(), "plain": systems.greenpipe()}
    if not quick:  # a smoke run leaves out the policy declared and unused
        running["policy"] = systems.greenpipe(handler=handler)
    running["fail"] = systems.greenpipe(handler=handler, env={
        "GREENPIPE_BENCH_FAIL": "10", "GREENPIPE_BENCH_DIR": book})  # fmt: skip
    try:
        figures = rounds(running, pairs, connections, seconds)
        retried = _stats_of(running["fail"].url)["retried"]
    finally:
        for each in running.values():
            each.stop()
    due: dict[str, float] = {}
    late = []
    for path in Path(book).glob("*.due"):
        for line in path.read_text().splitlines():
            job_id, at = line.split()
            due[job_id] = float(at)
    for path in Path(book).glob("*.ran"):
        for line in path.read_text().splitlines():
            job_id, at = line.split()
            if job_id in due:
                late.append((float(at) - due[job_id]) * 1000)
    shutil.rmtree(book, ignore_errors=True)
    lines = [f"- {pairs} rounds of {seconds:g} s, the four systems back to back:"]
    labels = {"plain": "no retry policy (the no-op handler)",
              "policy": "retries=3 declared, no job failing",
              "fail": "10% of jobs fail once, retried after 0.1 s"}  # fmt: skip
    lines += compare(figures, {k: v for k, v in labels.items() if k in running},
                     "plain")  # fmt: skip
    if late:
        late.sort()
        lines.append(
            f"  - {retried:,} retries; each ran after the time asked by "
            f"{late[len(late) // 2]:.1f} ms (p50), {late[int(len(late) * 0.99)]:.1f} "
            f"ms (p99), {late[-1]:.1f} ms at most, under that load"
        )
    return lines


def scale(
    pairs: int, connections: int, seconds: float, quick: bool = False
) -> list[str]:
    """1 and 2 web processes (WEB_PROCESSES, gunicorn -k gevent), against bare."""
    running = {"bare": systems.bare(), "one": systems.greenpipe(),
               "two": systems.greenpipe(web_processes=2)}  # fmt: skip
    labels = {"one": "1 web process", "two": "WEB_PROCESSES=2 (greenpipe's server)"}
    if not quick:  # a smoke run: three processes are two and one more
        running["three"] = systems.greenpipe(web_processes=3)
        labels["three"] = "WEB_PROCESSES=3"
    running["gunicorn"] = systems.greenpipe_gunicorn(2)
    labels["gunicorn"] = "gunicorn -k gevent -w 2"
    skipped = ""
    try:
        running["hosts"] = systems.greenpipe_hosts()
        labels["hosts"] = "1 web process, workers on 3 hosts (namespaces, veth)"
    except RuntimeError as exc:
        skipped = f"  - workers on other hosts: skipped ({exc})"
    try:
        figures = rounds(running, pairs, connections, seconds)
    finally:
        for each in running.values():
            each.stop()
    lines = [f"- {pairs} rounds of {seconds:g} s, the systems back to back "
             "(2 cores shared by the load tool, the webs and 3 workers each):"]  # fmt: skip
    lines += compare(figures, labels, "one")
    return lines + ([skipped] if skipped else [])


def _stats_of(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/stats", timeout=5) as response:
        return json.load(response)


def micro(quick: bool) -> list[str]:
    data = _json_of([PYTHON, "-m", "bench.micro", *(["--quick"] if quick else [])], 600)
    frames, disp, worker = data["frames"], data["dispatcher"], data["worker_jobs_per_s"]
    routing = data["routing"]
    return [
        f"- frames: encode a job record {frames['encode_us']:.2f} µs, decode one from a "
        f"100-job frame {frames['decode_us']:.2f} µs, clear one ack {frames['acks_us']:.2f} µs",
        f"- dispatcher, no HTTP: {disp['cpu_us_per_job']:.1f} µs of web CPU per job (all "
        f"threads, submit to ack), {disp['jobs_per_s']:,.0f} jobs/s",
        f"- one worker process, no-op handler: {worker['batch_32']:,.0f} jobs/s in batches of "
        f"32, {worker['batch_1']:,.0f} jobs/s one by one (target 25,000)",
        f"- choosing a worker per job (3 workers, back to back): before routing by name "
        f"{routing['before_us']:.2f} µs; a fleet of plain handlers "
        f"{routing['uniform_plain_us']:.2f} µs, of one registry "
        f"{routing['uniform_registry_us']:.2f} µs, mixed names "
        f"{routing['mixed_us']:.2f} µs; with queues, every worker on both "
        f"{routing['uniform_queues_us']:.2f} µs, a worker per queue "
        f"{routing['split_queues_us']:.2f} µs",
    ]


def latency(rate: float, seconds: float) -> list[str]:
    data = _json_of([PYTHON, "-m", "bench.latency", "--rate", f"{rate:.0f}",
                     "--seconds", f"{seconds:g}"], 600)  # fmt: skip
    handler, http = data["handler_start"], data["http"]
    return [
        f"- at {rate:,.0f} requests/s (50% of greenpipe's median peak), open loop, "
        f"{data['requests']} requests, {data['failures']} failures:",
        f"  request sent -> handler started: p50 {handler['p50_ms']:.1f} ms, "
        f"p99 {handler['p99_ms']:.1f} ms, max {handler['max_ms']:.1f} ms",
        f"  request sent -> 202 received: p50 {http['p50_ms']:.1f} ms, "
        f"p99 {http['p99_ms']:.1f} ms (the Python client shares the 2 cores)",
    ]


POST_LUA = 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "text/plain"\nwrk.body = string.rep("x", 1024)\n'


def memory(rps: float, quick: bool) -> list[str]:
    lines = []
    running = systems.greenpipe()
    try:
        target = 2_000 if quick else 100_000
        seconds = min(90.0, max(3.0, target / max(rps, 1.0) * 1.15))
        web = running.web[0]
        load.run(running.url + "/", 100, 1.0)
        rss = [web.rss_kib()]
        started = time.monotonic()
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(1.0):
                rss.append(web.rss_kib())

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        result = load.run(running.url + "/", 100, seconds)
        stop.set()
        thread.join(5)
        rss.append(web.rss_kib())
        lines.append(
            f"- web RSS over {result.requests:,} requests in {time.monotonic() - started:.0f} s: "
            f"{rss[0] / 1024:.1f} MiB at the start, {rss[-1] / 1024:.1f} MiB at the end, "
            f"{max(rss) / 1024:.1f} MiB at most (sampled every second)"
        )
    finally:
        running.stop()
    lines.append(_bytes_in_flight(quick))
    return lines


def _bytes_in_flight(quick: bool) -> str:
    """Workers hold every job; RSS growth of the web per job held (1 KiB bodies)."""
    if load.tool() != "wrk":
        return "- bytes per job in flight: needs wrk (POST bodies); skipped"
    running = systems.greenpipe(
        handler="bench.stamp:hold", worker_flags=("--concurrency", "50000")
    )
    try:
        web = running.web[0]
        before = web.rss_kib()
        with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
            script.write(POST_LUA)
            script.flush()
            subprocess.run(["wrk", "-t1", "-c50", f"-d{2 if quick else 6}s", "-s", script.name,
                            f"{running.url}/jobs"], capture_output=True, timeout=60)  # fmt: skip
        with urllib.request.urlopen(f"{running.url}/stats", timeout=5) as response:
            held = json.load(response)["in_flight"]
        grown = (web.rss_kib() - before) * 1024
        return (
            f"- bytes per job in flight: {grown / max(held, 1):,.0f} bytes of web RSS per job "
            f"({held:,} jobs of 1 KiB held by the workers, RSS +{grown / 2**20:.1f} MiB)"
        )
    finally:
        running.stop()


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True).stdout.strip()  # fmt: skip
    except OSError:  # git not installed: a tarball, a minimal machine
        return "unknown"
    return out or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--systems", default="bare,greenpipe,plain,multi,celery,rq")
    parser.add_argument(
        "--sections",
        default="macro,paired,journal,observe,curve,scale,retries,micro,latency,memory",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=6.0, help="per measurement")
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--catch-up", type=float, default=15.0,
                        help="seconds to wait for queue workers to finish after the load")  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true", help="1 round, 1-2 s runs, small counts"
    )
    parser.add_argument(
        "--no-write", action="store_true", help="do not write bench/results/"
    )
    args = parser.parse_args(argv)
    if args.quick:  # the suite's smoke run: every section works, figures aside
        # The throughput table gets 2 s (a 1 s Locust run on a busy machine may
        # count nothing); the sections after it 1 s, printing "-" for a ratio
        # to nothing: their code is what a smoke run checks, not their figures.
        args.rounds, args.seconds, args.catch_up = 1, 2.0, 10.0
    sections = args.sections.split(",")
    names = [n for n in args.systems.split(",") if n]
    unknown = set(names) - set(systems.SYSTEMS)
    if unknown:
        parser.error(
            f"unknown systems {sorted(unknown)}; choose from {sorted(systems.SYSTEMS)}"
        )
    available = systems.availability()
    skipped = {n: available[n] for n in names if available[n]}
    names = [n for n in names if n not in skipped]
    if "macro" in sections and "bare" not in names:
        names.insert(0, "bare")  # the ceiling every ratio needs
    started = time.monotonic()
    out = [
        f"# greenpipe benchmarks, {time.strftime('%Y-%m-%d %H:%M %Z')}, commit {_commit()}",
        "",
        f"{platform.node()}, {platform.machine()}, Python {platform.python_version()}, "
        f"load from {load.tool()} (1 thread, {args.connections} keep-alive connections, "
        f"{args.seconds:g} s per run, {args.rounds} rounds, systems alternating), "
        "3 no-op workers per system.",
        "",
    ]
    if load.tool() != "wrk":
        out.append("**wrk is not installed: Locust drives the load and is itself the limit; "
                   "ratios understate the web. `apt-get install wrk` for real figures.**\n")  # fmt: skip
    peak = None

    def section(title: str, produce) -> None:
        print(f"{title} ...", file=sys.stderr)
        try:
            lines = produce()
        except Exception as exc:  # one broken section must not lose the others
            lines = [f"- failed: {type(exc).__name__}: {exc}"]
        out.extend([f"## {title}", "", *lines, ""])

    if "macro" in sections:
        print("macro ...", file=sys.stderr)
        samples = macro(
            names, args.rounds, args.connections, args.seconds, args.catch_up
        )
        out += ["## Throughput", "", *macro_table(samples, skipped), ""]
        if "greenpipe" in samples:
            peak = statistics.median(s.rps for s in samples["greenpipe"])
    if "paired" in sections:
        section(
            "Paired: greenpipe against the ceiling",
            lambda: paired(
                1 if args.quick else 12, args.connections, 1 if args.quick else 3
            ),
        )
    # The back-to-back sections: their systems side by side, rounds rotating.
    back_to_back = (
        ("journal", "Journal: off, none (default), batch", journal),
        ("observe", "Observability: /metrics and /dashboard off and on", observe),
        ("curve", "CURVE: worker links encrypted and authenticated, off and on",
         curve),
        ("scale", "Several web processes: WEB_PROCESSES and gunicorn", scale),
        ("retries", "Retries: no policy, a policy unused, 10% of jobs failing once",
         retries),
    )  # fmt: skip
    pairs, seconds = (1, 1) if args.quick else (8, 3)
    for key, title, run in back_to_back:
        if key in sections:
            section(
                title,
                lambda run=run: run(pairs, args.connections, seconds, quick=args.quick),
            )
    if "micro" in sections:
        section("Hot path, piece by piece", lambda: micro(args.quick))
    if "latency" in sections:
        rate = (peak or 3000) / 2
        section("End-to-end latency", lambda: latency(rate, 1 if args.quick else 10))
    if "memory" in sections:
        section("Memory", lambda: memory(peak or 3000, args.quick))
    out.append(f"({time.monotonic() - started:.0f} s in all)")
    report = "\n".join(out)
    print(report)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"{time.strftime('%Y%m%d-%H%M')}-{_commit()}.md"
        path.write_text(report + "\n")
        (RESULTS / "latest.md").write_text(report + "\n")
        print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
