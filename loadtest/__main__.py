"""ab's semantics on Locust: exactly -n requests from -c users, then a delivery check.

    python -m loadtest -n 100000 -c 100 http://127.0.0.1:4567/
    python -m loadtest -n 100000 -c 100 --processes 2 --html report.html http://127.0.0.1:4567/

Prints a live progress line, then an ab-like summary (requests, failures by
kind, requests per second, latency percentiles) and the delivery check: it
reads the web's /stats before and after and compares accepted jobs with
acknowledged ones per worker, waiting up to --grace seconds for the last
acknowledgements. Exit status: 0 when every request got 202 and every
accepted job was acknowledged; 1 otherwise; 2 when the web cannot be reached.
The check counts all traffic the web saw meanwhile: run it alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from greenpipe.testing import free_port

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def fetch_stats(base: str, timeout: float = 5.0) -> dict[str, Any] | None:
    """The web's /stats, or None when the server answers but is not greenpipe."""
    try:
        with urllib.request.urlopen(f"{base}/stats", timeout=timeout) as response:
            stats = json.load(response)
    except urllib.error.HTTPError:
        return None
    except ValueError:
        return None
    return stats if isinstance(stats, dict) and "workers" in stats else None


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-n",
        "--requests",
        type=int,
        default=100_000,
        help="requests in all, exactly (default 100000)",
    )
    parser.add_argument(
        "-c",
        "--concurrency",
        type=int,
        default=100,
        help="users, all started at once (default 100)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="Locust processes (its --processes), for more than one core",
    )
    parser.add_argument("--get-weight", type=int, default=1, help="share of GET /")
    parser.add_argument(
        "--post-weight", type=int, default=1, help="share of POST /jobs"
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--verbose", action="store_true", help="also show Locust's own tables"
    )
    parser.add_argument(
        "--html", metavar="FILE", help="Locust's HTML report, written here"
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=10.0,
        help="seconds to wait for the last acknowledgements (default 10)",
    )
    parser.add_argument("url", help="the web, e.g. http://127.0.0.1:4567/")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1 or args.processes < 1:
        parser.error("-n, -c and --processes must be at least 1")
    if args.concurrency > args.requests:
        parser.error(
            f"-c {args.concurrency} is more than -n {args.requests}, as ab refuses too"
        )
    parts = urlsplit(args.url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        parser.error(f"expected a URL like http://127.0.0.1:4567/, got {args.url!r}")
    args.base = f"{parts.scheme}://{parts.netloc}"
    return args


def run_locust(args: argparse.Namespace, summary_path: str) -> int:
    argv = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "-u",
        str(args.concurrency),
        "-r",
        str(args.concurrency),
        "--host",
        args.base,
        "--ab-requests",
        str(args.requests),
        "--ab-summary",
        summary_path,
        "--get-weight",
        str(args.get_weight),
        "--post-weight",
        str(args.post_weight),
        "--only-summary",
        "--loglevel",
        "WARNING",
        "--stop-timeout",
        "10",
    ]
    if args.processes > 1:
        # Locust's master listened on 5557 for every run: a second run on the
        # machine failed to bind, and its workers joined the first run's
        # master (309 counted for -n 301). Its workers are forked before the
        # master binds, so the port is picked here and given to both: below
        # the OS's ephemeral range, where no outgoing connection takes it
        # before the master binds (a port from bind(0) was taken once, the
        # master died, and its workers waited for it until killed).
        port = str(free_port())
        argv += ["--processes", str(args.processes), "--master-bind-host",
                 "127.0.0.1", "--master-bind-port", port, "--master-host",
                 "127.0.0.1", "--master-port", port]  # fmt: skip
    if args.html:
        argv += ["--html", args.html]
    if not args.verbose:  # Locust's own tables (logged at INFO) give way to ours
        argv.append("--skip-log-setup")
    # In a process group of its own: should its master die (a port taken),
    # its forked workers would wait for it for ever; they go with the group.
    locust = subprocess.Popen(argv, stdout=sys.stderr, start_new_session=True)
    try:
        return locust.wait()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(locust.pid, signal.SIGTERM)  # ours: the group we started


def wait_for_acks(base: str, before: dict, grace: float) -> tuple[dict, float]:
    """Poll /stats until the accepted jobs are all acknowledged, or `grace` passes."""
    deadline = time.monotonic() + grace
    started = time.monotonic()
    while True:
        after = fetch_stats(base) or before
        if (
            _delta(after, before, "acked") + _delta(after, before, "dead_lettered")
            >= _delta(after, before, "accepted")
            or time.monotonic() >= deadline
        ):
            return after, time.monotonic() - started
        time.sleep(0.2)  # sleep-ok: polling a counter that has no event to wait on


def _delta(after: dict, before: dict, key: str) -> int:
    return after[key] - before[key]


def delivery(before: dict, after: dict, waited: float) -> dict[str, Any]:
    accepted = _delta(after, before, "accepted")
    acked = _delta(after, before, "acked")
    workers = []
    for old, new in zip(before["workers"], after["workers"], strict=True):
        workers.append(
            {
                "endpoint": new["endpoint"],
                "sent": new["sent"] - old["sent"],
                "acked": new["acked"] - old["acked"],
                "resent": new["resent"] - old["resent"],
                "state": new["state"],
            }
        )
    shares = [w["acked"] or w["sent"] for w in workers]
    missing = accepted - acked - _delta(after, before, "dead_lettered")
    missing -= _delta(after, before, "pushed")
    return {
        "accepted": accepted,
        "acked": acked,
        "resent": _delta(after, before, "resent"),
        "dead_lettered": _delta(after, before, "dead_lettered"),
        "rejected": _delta(after, before, "rejected"),
        "missing": max(0, missing),
        "waited_s": waited,
        "share_ratio": (max(shares) / min(shares)) if shares and min(shares) else None,
        "workers": workers,
        "at_most_once_workers": [
            w["endpoint"]
            for w, raw in zip(workers, after["workers"], strict=True)
            if raw.get("delivery") == "at-most-once"
        ],
    }


def render(summary: dict[str, Any], check: dict[str, Any] | None, args) -> str:
    lat = summary["latency_ms"]
    lines = [
        f"Server:                 {args.base}",
        f"Concurrency Level:      {args.concurrency}"
        + (f" ({args.processes} Locust processes)" if args.processes > 1 else ""),
        f"Time taken for tests:   {summary['elapsed_s']:.3f} seconds",
        f"Complete requests:      {summary['requests']}"
        + (
            " (exactly -n)"
            if summary["requests"] == args.requests
            else f" (asked {args.requests})"
        ),
        f"Failed requests:        {summary['failures']}",
    ]
    for kind, count in sorted(
        summary["failures_by_kind"].items(), key=lambda kv: -kv[1]
    ):
        lines.append(f"   {kind}: {count}")
    lines += [
        f"Requests per second:    {summary['rps']:,.2f} [#/sec] (mean)",
        f"Latency (ms):           p50 {lat['p50']:.0f}  p90 {lat['p90']:.0f}  "
        f"p99 {lat['p99']:.0f}  max {lat['max']:.0f}  (mean {lat['mean']:.1f})",
        "",
    ]
    if check is None:
        lines.append(
            "Delivery check:         skipped (the server's /stats is not greenpipe's)"
        )
        return "\n".join(lines)
    lines.append("Delivery check (from the web's /stats, before and after):")
    lines.append(f"  {'worker':<28} {'sent':>8} {'acked':>8} {'re-sent':>8}  state")
    for w in check["workers"]:
        counts = f"{w['sent']:>8} {w['acked']:>8} {w['resent']:>8}"
        lines.append(f"  {w['endpoint']:<28} {counts}  {w['state']}")
    ratio = check["share_ratio"]
    lines += [
        f"  accepted {check['accepted']}, acknowledged {check['acked']}, re-sent "
        f"{check['resent']}, dead-lettered {check['dead_lettered']}, rejected (503) "
        f"{check['rejected']}",
        f"  largest/smallest share: {ratio:.3f}"
        if ratio
        else "  largest/smallest share: -",
    ]
    if check["at_most_once_workers"]:
        lines.append(
            f"  at most once (no acks): {', '.join(check['at_most_once_workers'])}"
        )
    lines.append(verdict(check))
    return "\n".join(lines)


def verdict(check: dict[str, Any]) -> str:
    if check["at_most_once_workers"]:
        return "Verdict: plain PULL workers send no acks; delivery is not checked"
    if check["missing"] == 0:
        return f"Verdict: all {check['accepted']} accepted jobs acknowledged"
    return (
        f"Verdict: {check['missing']} of {check['accepted']} accepted jobs NOT "
        f"acknowledged after waiting {check['waited_s']:.1f} s"
    )


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        before = fetch_stats(args.base)
    except (OSError, urllib.error.URLError) as exc:
        reason = getattr(exc, "reason", exc)
        print(
            f"loadtest: cannot reach {args.base} ({reason}); is web.py running? "
            "(make run)",
            file=sys.stderr,
        )
        return 2
    with tempfile.NamedTemporaryFile(suffix=".json") as file:
        code = run_locust(args, file.name)
        try:
            summary = json.loads(Path(file.name).read_text())
        except ValueError:
            print(
                f"loadtest: Locust ended (exit {code}) without a summary",
                file=sys.stderr,
            )
            return 1
    check = None
    if before is not None:
        after, waited = wait_for_acks(args.base, before, args.grace)
        check = delivery(before, after, waited)
    ok = summary["failures"] == 0 and summary["requests"] == args.requests
    if check is not None and not check["at_most_once_workers"]:
        ok = ok and check["missing"] == 0
    if args.json:
        print(json.dumps({"summary": summary, "delivery": check, "ok": ok}, indent=2))
    else:
        print(render(summary, check, args))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
