"""Run every attack at report scale, CURVE off and on, and the framing table.

    python -m tests.security --report                          # print them
    python -m tests.security --report --write docs/security.md
    python -m tests.security --report --only framing --write docs/security.md

Each worker-port attack runs against a web and a worker with CURVE on, then
with it off (what the switch buys); the HTTP attacks run once (they do not
depend on CURVE). About three minutes. The framing table (tests/security/
framing.py) sends each raw request to web.py, to a user's app under
serve(app) and to gunicorn's gevent worker serving web.py; about 30 s.
`--write` replaces only the tables it ran.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

from tests.faults.__main__ import _commit
from tests.security import framing
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
    parser.add_argument("--only", choices=["attacks", "framing"],
                        help="run one of the two tables")  # fmt: skip
    args = parser.parse_args(argv)
    if not args.report:
        parser.print_help()
        return 2
    sections = {}
    if args.only != "attacks":
        sections[FRAMING] = framing_table()
    if args.only != "framing":
        sections[ATTACKS] = attack_table()
    text = "\n".join(sections.values())
    print(text)
    if args.write:
        path = Path(args.write)
        path.write_text(replace_sections(path.read_text(), sections))
    return 0


ATTACKS = ("<!-- report -->", "")  # to the end of the file
FRAMING = ("<!-- framing -->", "<!-- /framing -->")


def replace_sections(doc: str, sections: dict[tuple[str, str], str]) -> str:
    """`doc` with the text between each pair of markers replaced."""
    for (start, end), text in sections.items():
        head, found, rest = doc.partition(start)
        if not found:
            raise SystemExit(f"{start} is not in the file: add it where the table goes")
        tail = rest[rest.index(end) :] if end else ""
        doc = f"{head}{start}\n\n{text}\n{tail}"
    return doc


def _measured(started: float) -> str:
    return (
        f"Measured {time.strftime('%Y-%m-%d %H:%M %Z')} at commit {_commit()}, on "
        f"{platform.node()} ({platform.machine()}, Python "
        f"{platform.python_version()}), in {time.monotonic() - started:.0f} s."
    )


def framing_table() -> str:
    """Every framing case against web.py, serve(app) and gunicorn: Markdown."""
    started = time.monotonic()
    kinds = ("web.py", "serve(app)", "gunicorn")
    answers = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            print(f"-- framing table: {kind} ...", file=sys.stderr, flush=True)
            answers[kind] = framing.run(kind, Path(tmp) / kind.strip("()"))
    rows = []
    for case in framing.CASES:
        cells = [answers[kind][case.name].show() for kind in kinds]
        rows.append(f"| {case.name} | {case.status} ({case.rfc}) | " + " | ".join(cells)
                    + " |")  # fmt: skip
    return "\n".join([
        _measured(started),
        "",
        "Each request raw on its own connection; each server in front of one "
        "server.py. An answer in **bold** made a job; *+ 202*: a second "
        "request was read out of the first; *kept open*: the server did not "
        "close the connection within 5 s (HEADER_TIMEOUT, BODY_TIMEOUT and "
        "IDLE_TIMEOUT 2 s). gunicorn: 23.0.0, `-k gevent -w 1`, serving web.py's "
        "app (HTML error pages).",
        "",
        "| request | RFC 9112/9110 answer | web.py | serve(app) | gunicorn |",
        "|---|---|---|---|---|",
        *rows,
    ])  # fmt: skip


def attack_table() -> str:
    """The attacks on the worker ports and the HTTP door: Markdown."""
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
        _measured(started),
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
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
