"""Take docs/dashboard.png: three workers under load, one stopped mid-run.

    python -m tests.dashboard_shot [--out docs/dashboard.png] [--seconds 40]

The original demo's picture: a worker is stopped with SIGTERM halfway, its
line drops to zero and the other two take its share. Needs chromium.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

from greenpipe.testing import Web, start_web, start_worker
from tests.support import ROOT, Load, chromium, render


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    parser.add_argument("--seconds", type=float, default=40.0)
    args = parser.parse_args(argv)
    if chromium() is None:
        print("chromium is not installed (apt-get install chromium)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        workers = [
            start_worker(f"worker{i}", handler="greenpipe.handlers:noop")
            for i in range(3)
        ]
        web: Web = start_web([f"tcp://127.0.0.1:{port}" for _, port in workers],
                             journal_dir="off", dead_letter=f"{tmp}/dead.jsonl")  # fmt: skip
        procs = [web.proc, *(proc for proc, _ in workers)]
        try:
            load = Load(web.port, total=None, concurrency=8)
            half = time.monotonic() + args.seconds / 2
            while time.monotonic() < half:
                load.started.wait(0.5)  # sleep-ok: the picture needs time to pass
            workers[2][0].signal(signal.SIGTERM)
            end = half + args.seconds / 2
            while time.monotonic() < end:
                load.started.wait(0.5)  # sleep-ok: as above
            render(f"{web.url}/dashboard", 3000, screenshot=args.out)
            load.stop()
        finally:
            for proc in procs:
                proc.stop()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
