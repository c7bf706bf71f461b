"""Stop a worker under load and watch the load move: a chart and a report.

    python -m loadtest.scenario                # kill -9 worker 2 at 12 s, restart at 24
    python -m loadtest.scenario --signal STOP  # SIGSTOP instead, SIGCONT at 24 s
    python -m loadtest.scenario --duration 20 --kill-at 6 --restart-at 12 --out /tmp/run

Starts web.py and three server.py workers itself (free ports, real
processes), drives them with Locust (GET / and POST /jobs) for --duration
seconds, samples /stats five times a second, and writes to --out:

  scenario.png    handled jobs per second per worker, kill and restart marked
  scenario.json   per-worker totals, HTTP failures, jobs lost (accepted but in
                  no handler's records), re-sent, time for the others to absorb
                  the stopped worker's share, time for it to rejoin

Exit status 0 when no HTTP request failed and no accepted job was lost.
The defaults finish in under a minute.
"""

from __future__ import annotations

import gevent.monkey

gevent.monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
from locust.env import Environment  # noqa: E402

from greenpipe.testing import Proc, start_web, start_worker  # noqa: E402
from loadtest.locustfile import JobUser  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ACCEPTED: set[str] = set()


class ScenarioUser(JobUser):
    """JobUser that also remembers the id of every accepted job."""

    def _expect_202(self, response) -> None:
        super()._expect_202(response)
        if response.status_code == 202:
            ACCEPTED.add(json.loads(response.content)["id"])


@dataclass
class Sample:
    at: float  # seconds since the load started
    acked: list[int]
    states: list[str]


class System:
    """web.py + three recording workers on free ports."""

    def __init__(self, out: Path) -> None:
        self.records = out / "records"
        self.records.mkdir(parents=True, exist_ok=True)
        for old in self.records.glob("*.ids"):
            old.unlink()
        self.env = {"GREENPIPE_RECORD_DIR": str(self.records), "LOG_LEVEL": "WARNING"}
        self.children: list[Proc] = []
        self.workers: list[Proc] = []
        self.ports: list[int] = []
        for index in range(3):
            child, port = self.start_worker(index, 0)
            self.ports.append(port)
            self.workers.append(child)
        addresses = [f"127.0.0.1:{port}" for port in self.ports]
        web = start_web(
            addresses,
            timeout=20,
            dead_letter=out / "dead-letter.jsonl",
            journal_dir=out / "journal",
            log_level="INFO",
        )
        self.web = web.proc
        self.children.append(self.web)
        self.url = web.url

    def start_worker(self, index: int, port: int) -> tuple[Proc, int]:
        child, real_port = start_worker(
            f"worker{index + 1}",
            port,
            self.env,
            timeout=20,
            handler="greenpipe.testing:record",
            log_level="INFO",
        )
        self.children.append(child)
        return child, real_port

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/stats", timeout=5) as response:
            return json.load(response)

    def handled(self) -> set[str]:
        ids: set[str] = set()
        for path in self.records.glob("*.ids"):
            ids.update(
                line.split()[0] for line in path.read_text().splitlines() if line
            )
        return ids

    def stop(self) -> dict[str, int]:
        """SIGTERM the web first (it drains), then the workers; their exit codes."""
        codes = {}
        for child in [self.web, *[c for c in self.children if c is not self.web]]:
            try:
                codes[child.name] = child.stop(timeout=8)
            except AssertionError:  # overran: killed, and it says so
                codes[child.name] = -9
        return codes


def _rate(samples: list[Sample], index: int | None, start: float, end: float) -> float:
    """Jobs per second acknowledged by worker `index` (None: all) between two times."""
    window = [s for s in samples if start <= s.at <= end]
    if len(window) < 2:
        return 0.0

    def total(sample: Sample) -> int:
        return sum(sample.acked) if index is None else sample.acked[index]

    span = window[-1].at - window[0].at
    return (total(window[-1]) - total(window[0])) / span if span > 0 else 0.0


def analyse(
    samples: list[Sample], victim: int, kill_at: float, restart_at: float
) -> dict:
    """When the others carried 90% of the earlier rate; when the victim is back.

    `restart_at` is when the restarted worker logged that it listens (or when
    SIGCONT was sent), so process start-up is not counted as rejoining.
    """
    before = _rate(samples, None, max(0.0, kill_at - 4), kill_at)
    others = [i for i in range(3) if i != victim]
    absorbed = None
    for sample in samples:
        if sample.at <= kill_at:
            continue
        rate = sum(_rate(samples, i, sample.at - 0.6, sample.at) for i in others)
        if before and rate >= 0.9 * before:
            absorbed = sample.at - kill_at
            break
    rejoined = None
    previous = None
    for sample in samples:
        if sample.at < restart_at:
            previous = sample
            continue
        if (
            sample.states[victim] in ("ready", "full")
            and previous is not None
            and sample.acked[victim] > previous.acked[victim]
        ):
            rejoined = sample.at - restart_at
            break
        previous = sample
    return {"rate_before_kill": before, "absorbed_s": absorbed, "rejoined_s": rejoined}


def chart(
    samples: list[Sample], path: Path, kill_at: float, restart_at: float, how: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    times = [s.at for s in samples]
    for index in range(3):
        rates = [_rate(samples, index, t - 1.0, t) for t in times]
        ax.plot(times, rates, label=f"worker {index + 1}", linewidth=1.6)
    ax.axvline(kill_at, color="crimson", linestyle="--", linewidth=1)
    ax.axvline(restart_at, color="seagreen", linestyle="--", linewidth=1)
    top = ax.get_ylim()[1]
    stop_word, start_word = (
        ("kill -9", "restart") if how == "KILL" else ("SIGSTOP", "SIGCONT")
    )
    ax.text(kill_at, top * 0.97, f" {stop_word}", color="crimson", va="top")
    ax.text(restart_at, top * 0.97, f" {start_word}", color="seagreen", va="top")
    ax.set_xlabel("seconds since the load started")
    ax.set_ylabel("jobs handled per second (1 s window)")
    ax.set_title("greenpipe: a worker stops under load, the others take its share")
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    system = System(out)
    victim = args.victim - 1
    env = Environment(user_classes=[ScenarioUser], host=system.url)
    runner = env.create_local_runner()
    samples: list[Sample] = []
    started = time.monotonic()

    def sample() -> None:
        while True:
            stats = system.stats()
            samples.append(
                Sample(
                    time.monotonic() - started,
                    [w["acked"] for w in stats["workers"]],
                    [w["state"] for w in stats["workers"]],
                )
            )
            gevent.sleep(0.2)

    sampler = gevent.spawn(sample)
    runner.start(args.users, spawn_rate=args.users)
    print(
        f"scenario: load on {system.url}; worker {args.victim} (port "
        f"{system.ports[victim]}) gets SIG{args.signal} at {args.kill_at:g} s",
        file=sys.stderr,
    )
    gevent.sleep(max(0.0, args.kill_at - (time.monotonic() - started)))
    victim_child = system.workers[victim]
    victim_child.popen.send_signal(getattr(signal, f"SIG{args.signal}"))
    gevent.sleep(max(0.0, args.restart_at - (time.monotonic() - started)))
    if args.signal == "KILL":
        victim_child.popen.wait(10)
        system.children.remove(victim_child)  # its exit code is ours: -9
        system.workers[victim], _ = system.start_worker(victim, system.ports[victim])
    else:
        victim_child.popen.send_signal(signal.SIGCONT)
    back_at = time.monotonic() - started
    gevent.sleep(max(0.0, args.duration - (time.monotonic() - started)))
    runner.quit()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        stats = system.stats()
        if stats["pending"] == 0 and stats["in_flight"] == 0:
            break
        gevent.sleep(0.2)
    sampler.kill()
    stats = system.stats()
    handled = system.handled()
    codes = system.stop()
    lost = sorted(ACCEPTED - handled)
    figures = analyse(samples, victim, args.kill_at, back_at)
    report = {
        "signal": f"SIG{args.signal}",
        "victim": f"worker {args.victim} (port {system.ports[victim]})",
        "duration_s": args.duration,
        "stopped_at_s": args.kill_at,
        "restarted_at_s": args.restart_at,
        "requests": env.stats.total.num_requests,
        "http_failures": env.stats.total.num_failures,
        "accepted": len(ACCEPTED),
        "lost": len(lost),
        "lost_ids": lost[:20],
        "resent": stats["resent"],
        "dead_lettered": stats["dead_lettered"],
        "per_worker": {
            f"worker {i + 1}": w["acked"] for i, w in enumerate(stats["workers"])
        },
        "exit_codes": codes,
        **figures,
    }
    (out / "scenario.json").write_text(json.dumps(report, indent=2) + "\n")
    chart(samples, out / "scenario.png", args.kill_at, args.restart_at, args.signal)
    print(render(report, out))
    ok = report["http_failures"] == 0 and report["lost"] == 0
    return 0 if ok else 1


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def render(report: dict, out: Path) -> str:
    r = report
    split = ", ".join(f"{name} {count}" for name, count in r["per_worker"].items())
    return "\n".join(
        [
            f"{r['signal']} to {r['victim']} at {r['stopped_at_s']:g} s, back at "
            f"{r['restarted_at_s']:g} s, load for {r['duration_s']:g} s",
            f"requests {r['requests']}, HTTP failures {r['http_failures']}, accepted "
            f"{r['accepted']}, lost {r['lost']}, re-sent {r['resent']}, "
            f"dead-lettered {r['dead_lettered']}",
            f"handled per worker: {split}",
            f"the others absorbed its share in {_seconds(r['absorbed_s'])} (90% of "
            f"the rate before the stop, {r['rate_before_kill']:.0f} jobs/s)",
            f"back in rotation {_seconds(r['rejoined_s'])} after it listened "
            "again (or got SIGCONT)",
            f"chart: {out / 'scenario.png'}   report: {out / 'scenario.json'}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.scenario",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--duration", type=float, default=40.0, help="seconds of load (40)"
    )
    parser.add_argument(
        "--kill-at", type=float, default=12.0, help="when to stop it (12)"
    )
    parser.add_argument(
        "--restart-at", type=float, default=24.0, help="when to restart (24)"
    )
    parser.add_argument("--signal", choices=["KILL", "STOP"], default="KILL")
    parser.add_argument("--victim", type=int, choices=[1, 2, 3], default=2)
    parser.add_argument("--users", type=int, default=20, help="Locust users (20)")
    parser.add_argument(
        "--out", default="loadtest/out", help="directory for the results"
    )
    args = parser.parse_args(argv)
    if not 0 < args.kill_at < args.restart_at < args.duration:
        parser.error("need 0 < --kill-at < --restart-at < --duration")
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
