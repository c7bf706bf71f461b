"""Fault-injection harness: a web, workers, load, a fault, and the books.

A `Cluster` runs web.py and recording workers as real processes; `Load`
drives concurrent HTTP; a `Monitor` samples /stats to time detection and
recovery; `settle()` closes the books from the handlers' own records:
accepted (202s), handled, lost (accepted, never handled), duplicated (handled
more than once), HTTP failures. Used by tests/faults/test_faults.py (short)
and by ``python -m tests.faults --report`` (longer, prints the table).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from greenpipe.curve import write_keypair
from greenpipe.testing import entry, flags
from tests.support import PYTHON, ROOT, Load, Proc, Web, poll_until, read_records

OUT_OF_ROTATION = {"lost", "leaving", "connecting"}
IN_ROTATION = {"ready", "full"}


@dataclass
class Outcome:
    """One scenario's figures (the columns of docs/reliability.md)."""

    scenario: str
    requests: int = 0
    accepted: int = 0
    handled: int = 0
    lost: int = 0
    duplicated: int = 0
    http_failures: int = 0
    detect_s: float | None = None
    recover_s: float | None = None
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self) -> list[str]:
        def sec(value: float | None) -> str:
            return "-" if value is None else f"{value:.2f} s"

        return [
            self.scenario,
            str(self.requests),
            str(self.accepted),
            str(self.handled),
            str(self.lost),
            str(self.duplicated),
            str(self.http_failures),
            sec(self.detect_s),
            sec(self.recover_s),
        ]


HEADER = [
    "scenario",
    "requests",
    "accepted",
    "handled",
    "lost",
    "duplicated",
    "HTTP failures",
    "detection",
    "recovery",
]


def table(outcomes: list[Outcome]) -> str:
    rows = [HEADER] + [o.row() for o in outcomes]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
        for r in rows
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


class Monitor:
    """Samples /stats every 20 ms in a thread; answers "when did X first hold"."""

    def __init__(self, web: Web, interval: float = 0.02) -> None:
        self.web = web
        self.samples: list[tuple[float, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._interval = interval
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                stats = self.web.stats()
            except (OSError, AssertionError):
                stats = None
            if stats is not None:
                self.samples.append((time.monotonic(), stats))
            self._stop.wait(self._interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def first(self, since: float, index: int, states: set[str]) -> float | None:
        """Seconds after `since` until worker `index` was first in one of `states`."""
        for at, stats in list(self.samples):
            if at >= since and stats["workers"][index]["state"] in states:
                return at - since
        return None

    def wait(self, index: int, states: set[str], timeout: float, what: str) -> float:
        """Block until worker `index` is in `states`; return the time it was seen."""
        deadline = time.monotonic() + timeout
        seen = len(self.samples)
        while time.monotonic() < deadline:
            for at, stats in self.samples[seen:]:
                if stats["workers"][index]["state"] in states:
                    return at
            seen = max(0, len(self.samples) - 1)
            time.sleep(self._interval)  # sleep-ok: waiting on the sampler thread
        raise AssertionError(f"not within {timeout} s: {what}")


class Cluster:
    """web.py + workers as real processes in a scratch directory; stop() ends all.

    Workers record each job they handle (tests.handlers:record). A worker can
    live in a network namespace (`netns`), reached over a veth pair.
    """

    def __init__(
        self,
        workers: int = 3,
        web: dict[str, Any] | None = None,
        worker: dict[str, Any] | None = None,
        plain: bool = False,
        netns: Netns | None = None,
        worker_env: dict[int, dict[str, str]] | None = None,
        curve: bool = False,
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="greenpipe-faults-"))
        web = dict(web or {})
        if curve:  # every link encrypted and authenticated: same faults, same books
            keys, allow = self.dir / "keys", self.dir / "allow"
            for name in ("worker", "web"):
                write_keypair(str(keys), name)
            allow.mkdir()
            (allow / "web.key").write_bytes((keys / "web.key").read_bytes())
            worker = {**(worker or {}), "curve_secret": keys / "worker.key_secret",
                      "curve_allow": allow}  # fmt: skip
            web.update(curve_secret=keys / "web.key_secret",
                       curve_server=keys / "worker.key")  # fmt: skip
        self.records = self.dir / "records"
        self.records.mkdir()
        self.dead_letter = self.dir / "dead-letter.jsonl"
        self.procs: list[Proc] = []
        self.plain = plain
        self.netns = netns
        self.worker_options = worker or {}
        self.worker_env = worker_env or {}
        self.workers: list[Proc] = []
        self.ports: list[int] = []
        self.hosts: list[str] = []
        for index in range(workers):
            in_ns = netns is not None and index == workers - 1
            host = netns.inner_ip if in_ns else "127.0.0.1"
            self.hosts.append(host)
            proc, port = self._start_worker(index, 0, host)
            self.workers.append(proc)
            self.ports.append(port)
        scheme = "push+tcp://" if plain else "tcp://"
        addresses = ",".join(
            f"{scheme}{host}:{port}"
            for host, port in zip(self.hosts, self.ports, strict=True)
        )
        options = {"dead_letter": self.dead_letter, "journal_dir": self.dir / "journal"}
        options.update(web)
        self._web_argv = [*entry("web"), "--port", "0", "--workers", addresses]
        self._web_argv += flags(options)
        self.start_web()

    def start_web(self) -> Web:
        """Start web.py (again, on the same journal after a kill); wait for the barrier."""
        self.web_proc = self._spawn("web", self._web_argv)
        port = int(self.web_proc.expect(r"serving http://[^:]+:(\d+)", 20)[1])
        self.web = Web(self.web_proc, port)
        self.web_proc.expect("barrier met", 20)
        return self.web

    def _spawn(
        self,
        name: str,
        argv: list[str],
        prefix: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> Proc:
        full_env = {"GREENPIPE_RECORD_DIR": str(self.records), "PYTHONPATH": str(ROOT)}
        proc = Proc(name, (prefix or []) + argv, env={**full_env, **(env or {})})
        self.procs.append(proc)
        return proc

    def _start_worker(self, index: int, port: int, host: str) -> tuple[Proc, int]:
        prefix = (
            self.netns.exec_prefix()
            if self.netns and host == self.netns.inner_ip
            else []
        )
        options = {"port": port, "host": host}
        if self.plain:
            argv = [PYTHON, str(ROOT / "tests" / "faults" / "plain_worker.py")]
        else:
            argv = entry("worker")
            options.update(handler="tests.handlers:record", **self.worker_options)
        env = self.worker_env.get(index)
        proc = self._spawn(f"worker{index}", argv + flags(options), prefix, env)
        match = proc.expect(r"listening on tcp://[^:]+:(\d+)", 20)
        return proc, int(match[1])

    def restart_worker(self, index: int) -> Proc:
        """Start worker `index` again on its port (after it exited)."""
        proc, _ = self._start_worker(index, self.ports[index], self.hosts[index])
        self.workers[index] = proc
        return proc

    def kill(self, index: int, signum: int = signal.SIGKILL) -> None:
        proc = self.workers[index]
        proc.signal(signum)
        if signum in (signal.SIGKILL, signal.SIGTERM):
            proc.wait_exit(10)

    def handled(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for entries in read_records(self.records).values():
            counts.update(job_id for job_id, _ in entries)
        return counts

    def settle(self, outcome: Outcome, load: Load, timeout: float = 30.0) -> Outcome:
        """Wait until the web has every accepted job acknowledged; fill the books."""
        if self.web_proc.running:
            self.web.wait_settled(timeout)
        return self.books(outcome, load)

    def books(self, outcome: Outcome, load: Load) -> Outcome:
        accepted = load.accepted_ids()
        handled = self.handled()
        outcome.requests = len(load.results) + len(load.errors)
        outcome.accepted = len(accepted)
        outcome.handled = len(accepted & handled.keys())
        outcome.lost = len(accepted - handled.keys())
        outcome.duplicated = sum(handled[i] - 1 for i in accepted if handled[i] > 1)
        outcome.http_failures = outcome.requests - outcome.accepted
        return outcome

    def stop(self) -> list[str]:
        """Stop every process (SIGCONT first, then SIGTERM); return problems seen."""
        problems = []
        for proc in reversed(self.procs):
            if not proc.running:
                continue
            try:
                proc.stop(timeout=8)
            except AssertionError as exc:
                problems.append(str(exc))
        shutil.rmtree(self.dir, ignore_errors=True)
        return problems

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class NetnsUnavailable(Exception):
    """Network namespaces or iptables cannot be used here (not root, no tools)."""


class Netns:
    """A network namespace joined to this one by a veth pair; iptables inside it.

    `cut("drop")` silently drops the worker's traffic (a pulled cable);
    `cut("reset")` answers it with TCP resets; `heal()` removes the rule.
    Everything is removed on exit, whatever happened.
    """

    def __init__(self, name: str | None = None, subnet: int | None = None) -> None:
        if os.geteuid() != 0:
            raise NetnsUnavailable("needs root (ip netns, iptables)")
        for tool in ("ip", "iptables"):
            if shutil.which(tool) is None:
                raise NetnsUnavailable(
                    f"{tool} is not installed (apt-get install iproute2 iptables)"
                )
        self.name = name or f"gp{os.getpid() % 100000}"
        octet = subnet if subnet is not None else 200 + os.getpid() % 50
        # Interface names (at most 15 bytes) from the namespace's name, so that
        # several namespaces can live side by side (one "host" each).
        self.outer = f"{self.name}o"[:15]
        self.inner = f"{self.name}i"[:15]
        self.outer_ip = f"10.{octet}.0.1"
        self.inner_ip = f"10.{octet}.0.2"
        self.rules: list[list[str]] = []
        try:
            self._run("ip", "netns", "add", self.name)
            self._run(
                "ip",
                "link",
                "add",
                self.outer,
                "type",
                "veth",
                "peer",
                "name",
                self.inner,
            )
            self._run("ip", "link", "set", self.inner, "netns", self.name)
            self._run("ip", "addr", "add", f"{self.outer_ip}/24", "dev", self.outer)
            self._run("ip", "link", "set", self.outer, "up")
            self._in_ns("ip", "addr", "add", f"{self.inner_ip}/24", "dev", self.inner)
            self._in_ns("ip", "link", "set", self.inner, "up")
            self._in_ns("ip", "link", "set", "lo", "up")
            self._in_ns("iptables", "-S")
        except subprocess.CalledProcessError as exc:
            self.close()
            raise NetnsUnavailable(
                f"cannot set up a network namespace: {exc.stderr.strip()}"
            ) from None

    @staticmethod
    def _run(*argv: str) -> None:
        subprocess.run(argv, check=True, capture_output=True, text=True, timeout=20)

    def _in_ns(self, *argv: str) -> None:
        self._run("ip", "netns", "exec", self.name, *argv)

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def cut(self, mode: str, port: int) -> None:
        if mode == "drop":
            rules = [
                ["INPUT", "-p", "tcp", "--dport", str(port), "-j", "DROP"],
                ["OUTPUT", "-p", "tcp", "--sport", str(port), "-j", "DROP"],
            ]
        else:
            rules = [
                [
                    "INPUT",
                    "-p",
                    "tcp",
                    "--dport",
                    str(port),
                    "-j",
                    "REJECT",
                    "--reject-with",
                    "tcp-reset",
                ]
            ]
        for rule in rules:
            self._in_ns("iptables", "-A", *rule)
            self.rules.append(rule)

    def heal(self) -> None:
        while self.rules:
            self._in_ns("iptables", "-D", *self.rules.pop())

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.heal()
        for argv in (
            ("ip", "netns", "del", self.name),
            ("ip", "link", "del", self.outer),
        ):
            subprocess.run(argv, capture_output=True, timeout=20)

    def __enter__(self) -> Netns:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def warm_up(cluster: Cluster, load: Load, jobs: int = 200) -> None:
    """Wait until `jobs` were accepted and handed over: the load is flowing."""
    poll_until(
        cluster.web.stats,
        lambda s: sum(w["sent"] for w in s["workers"]) >= jobs,
        30,
        f"{jobs} jobs sent to the workers",
    )
