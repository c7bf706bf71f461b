"""Run every attack at report scale, CURVE off and on, and print one table.

    python -m tests.security --report                          # print it
    python -m tests.security --report --write docs/security.md

Each worker-port attack runs against a web and a worker with CURVE on, then
with it off (what the switch buys); the HTTP attacks run once (they do not
depend on CURVE). About two minutes.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

from tests.faults.__main__ import _commit
from tests.security.cases import HTTP_CASES, ZMQ_CASES, Result, System, measure

ZMQ_ATTEMPTS = 20
HTTP_ATTEMPTS = 200


def row(r: Result) -> str:
    return (
        f"| {r.case} | {'on' if r.curve else 'off'} | {r.attempts} | "
        f"**{r.injected}** | {r.http_failures} of {r.http_requests} | "
        f"{r.p99_ms:.0f} / {r.max_ms:.0f} | {r.fds[0]}→{r.fds_after[0]} / "
        f"{r.fds[1]}→{r.fds_after[1]} | {r.rss_kib[0] // 1024}→"
        f"{r.rss_kib[1] // 1024} | {r.note} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.security", description=__doc__
    )
    parser.add_argument("--report", action="store_true", help="run and print the table")
    parser.add_argument("--write", metavar="FILE", help="also write it as Markdown")
    args = parser.parse_args(argv)
    if not args.report:
        parser.print_help()
        return 2
    started = time.monotonic()
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        for curve in (True, False):
            system = System(Path(tmp) / f"curve-{curve}", curve=curve).start()
            try:
                for case, attack in ZMQ_CASES.items():
                    print(f"-- {case} (CURVE {curve}) ...", file=sys.stderr, flush=True)
                    results.append(measure(system, case, attack, ZMQ_ATTEMPTS))
                    print(row(results[-1]), file=sys.stderr, flush=True)
                if not curve:
                    continue
                for case, attack in HTTP_CASES.items():
                    attempts = (2 * system.max_connections if "idle" in case
                                else HTTP_ATTEMPTS)  # fmt: skip
                    print(f"-- {case} ...", file=sys.stderr, flush=True)
                    results.append(measure(system, case, attack, attempts))
                    print(row(results[-1]), file=sys.stderr, flush=True)
            finally:
                system.stop()
    lines = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M %Z')} at commit {_commit()}, on "
        f"{platform.node()} ({platform.machine()}, Python "
        f"{platform.python_version()}), in {time.monotonic() - started:.0f} s.",
        "",
        "Web: MAX_CONNECTIONS 50, HEADER_TIMEOUT 2 s, BODY_TIMEOUT 2 s, "
        "IDLE_TIMEOUT 3 s (short, to keep the run short; the defaults are 1000, "
        "10, 30, 30). Legitimate traffic: one `GET /` every 20 ms on a new "
        "connection during each attack. *Injected*: jobs the worker handled "
        "that the web never accepted. File descriptors (web / worker) and the "
        "web's RSS (MiB) before the attack and after it ended.",
        "",
        "| attack | CURVE | attempts | injected | legit failures | legit p99 / max ms "
        "| fds web / worker | web RSS MiB | what happened |",
        "|---|---|---|---|---|---|---|---|---|",
        *map(row, results),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        path = Path(args.write)
        head = path.read_text().split("<!-- report -->")[0] if path.exists() else ""
        path.write_text(head + "<!-- report -->\n\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
