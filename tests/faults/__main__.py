"""Run every fault scenario at report scale and print one table.

    python -m tests.faults --report                       # print the table
    python -m tests.faults --report --write docs/reliability.md
    python -m tests.faults --report --only crash,freeze   # a subset
    python -m tests.faults --report --ci                  # the short CI scale

Network-cut scenarios need root, ip and iptables; they are skipped (and said
so) otherwise. Takes about 5 minutes at report scale.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
import traceback

from tests.faults.harness import NetnsUnavailable, Outcome, table
from tests.faults.scenarios import ALL, CI, REPORT
from tests.support import ROOT


def _commit() -> str:
    result = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return (result.stdout.strip() or "unknown") + (
        " (with local changes)" if dirty else ""
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults", description=__doc__)
    parser.add_argument("--report", action="store_true", help="run and print the table")
    parser.add_argument("--ci", action="store_true", help="use the short CI scale")
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--write", metavar="FILE", help="write the report as Markdown")
    args = parser.parse_args(argv)
    if not args.report:
        parser.print_help()
        return 2
    names = [n for n in args.only.split(",") if n] or list(ALL)
    unknown = set(names) - set(ALL)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from {sorted(ALL)}")
    scale = CI if args.ci else REPORT
    outcomes: list[Outcome] = []
    skipped: list[str] = []
    failed: list[str] = []
    started = time.monotonic()
    for name in names:
        print(f"-- {name} ...", file=sys.stderr, flush=True)
        try:
            outcome = ALL[name](scale)
        except NetnsUnavailable as exc:
            skipped.append(f"{name}: skipped, {exc}")
            continue
        except Exception:  # keep going: one broken scenario must not hide the rest
            failed.append(f"{name}: {traceback.format_exc(limit=3)}")
            continue
        outcomes.append(outcome)
        print(table([outcome]).splitlines()[-1], file=sys.stderr, flush=True)
    when = time.strftime("%Y-%m-%d %H:%M %Z")
    lines = [
        f"Measured {when} at commit {_commit()}, on {platform.node()} "
        f"({platform.machine()}, Python {platform.python_version()}), "
        f"{'CI' if scale is CI else 'report'} scale, in {time.monotonic() - started:.0f} s.",
        "",
        table(outcomes),
        "",
    ]
    for outcome in outcomes:
        for note in outcome.notes:
            lines.append(f"- {outcome.scenario}: {note}")
        if "web_fds" in outcome.extra:
            fds, rss = outcome.extra["web_fds"], outcome.extra["web_rss_kib"]
            lines.append(
                f"- {outcome.scenario}: web open fds {fds[0]} -> {fds[1]}, "
                f"RSS {rss[0] / 1024:.1f} -> {rss[1] / 1024:.1f} MiB"
            )
    lines += [f"- {line}" for line in skipped + failed]
    report = "\n".join(lines)
    print(report)
    if args.write:
        _write(args.write, report)
    return 1 if failed else 0


def _write(path: str, report: str) -> None:
    """Replace the measured block between the markers in `path`."""
    begin, end = "<!-- faults:begin -->", "<!-- faults:end -->"
    target = ROOT / path
    text = target.read_text() if target.exists() else f"{begin}\n{end}\n"
    head, _, rest = text.partition(begin)
    _, _, tail = rest.partition(end)
    target.write_text(f"{head}{begin}\n{report}\n{end}{tail}")
    print(f"wrote {target}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
