"""The systems under test: how to start each on free loopback ports, count, stop.

Every system answers GET / with 202 {"id": ...} on the same gevent server
class; they differ in what happens to the job. Processes are real and are
started fresh for each measurement, so one run's backlog never slows the next.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path

from greenpipe.testing import PYTHON, ROOT, Proc, free_port

NOOP = "greenpipe.handlers:noop"


def journal_flags(mode: str) -> list[str]:
    """A fresh journal directory per run (a run's leftovers never replay into the next)."""
    if mode == "off":
        return ["--journal-dir", "off"]
    directory = tempfile.mkdtemp(prefix="greenpipe-bench-journal-")
    return ["--journal-dir", directory, "--journal-sync", mode]


def curve_flags() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Fresh keys in a temp dir: (server.py flags, web.py flags) turning CURVE on."""
    from greenpipe.curve import write_keypair

    folder = Path(tempfile.mkdtemp(prefix="greenpipe-bench-keys-"))
    for name in ("worker", "web"):
        write_keypair(str(folder / "keys"), name)
    (folder / "allow").mkdir()
    (folder / "allow" / "web.key").write_bytes(
        (folder / "keys" / "web.key").read_bytes()
    )
    worker = ("--curve-secret", str(folder / "keys" / "worker.key_secret"),
              "--curve-allow", str(folder / "allow"))  # fmt: skip
    web = ("--curve-secret", str(folder / "keys" / "web.key_secret"),
           "--curve-server", str(folder / "keys" / "worker.key"))  # fmt: skip
    return worker, web


def cpu_ticks(root: int) -> int:
    """utime + stime of `root` and all its descendants, in clock ticks."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()
        pid = int(entry)
        stats[pid] = fields
        children.setdefault(int(fields[1]), []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += int(stats[pid][11]) + int(stats[pid][12])
        todo.extend(children.get(pid, []))
    return total


@dataclass
class Running:
    """A started system: its URL, the processes that count as "web", and its books."""

    name: str
    url: str = ""
    procs: list[Proc] = field(default_factory=list)
    web: list[Proc] = field(default_factory=list)
    workers: list[Proc] = field(default_factory=list)
    redis_url: str = ""
    cleanup: list = field(default_factory=list)  # called after stop (namespaces)

    def web_ticks(self) -> int:
        return sum(cpu_ticks(proc.pid) for proc in self.web)

    def handled_live(self) -> tuple[int, dict[str, int]] | None:
        """Jobs handled so far, per worker, where the system can tell while running."""
        if not self.redis_url:
            return None
        import redis

        from bench.queues import HANDLED

        client = redis.Redis.from_url(self.redis_url)
        per = {k.decode(): int(v) for k, v in client.hgetall(HANDLED).items()}
        client.close()
        return sum(per.values()), per

    def stop(self) -> tuple[int, dict[str, int]] | None:
        """Stop everything (web first: it drains); return workers' own handled counts."""
        for proc in [*self.web, *[p for p in self.procs if p not in self.web]]:
            if proc.running:
                proc.stop(timeout=10)
        for done in self.cleanup:
            done()
        if self.redis_url or not self.workers:
            return None
        per = {}
        for index, proc in enumerate(self.workers):
            found = proc.matches(r"handled (\d+) jobs")
            per[f"worker{index + 1}"] = int(found[-1][1]) if found else 0
        return sum(per.values()), per


def _proc(
    running: Running, name: str, argv: list[str], env: dict | None = None
) -> Proc:
    proc = Proc(name, argv, env=env)
    running.procs.append(proc)
    return proc


def _workers(
    running: Running, argv: list[str], pattern: str, env: dict | None = None
) -> list[int]:
    ports = []
    for index in range(3):
        proc = _proc(running, f"worker{index + 1}", argv, env)
        ports.append(int(proc.expect(pattern, 20)[1]))
        running.workers.append(proc)
    return ports


def _web(
    running: Running,
    argv: list[str],
    pattern: str,
    ready: str | None = None,
    env: dict | None = None,
) -> None:
    proc = _proc(running, "web", argv, env)
    running.url = f"http://127.0.0.1:{proc.expect(pattern, 20)[1]}"
    if ready:
        proc.expect(ready, 20)
    running.web.append(proc)


def bare() -> Running:
    running = Running("bare Flask/gevent (ceiling)")
    _web(
        running,
        [PYTHON, "-m", "bench.bare", "--port", "0"],
        r"serving http://[^:]+:(\d+)",
    )
    return running


def greenpipe(
    web_processes: int = 1,
    handler: str = NOOP,
    worker_flags: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    journal: str = "none",
    web_flags: tuple[str, ...] = (),
) -> Running:
    """web.py + 3 server.py (the no-op handler unless told otherwise).

    `journal`: "none" (the default: written, not synced), "batch" (an
    fdatasync per group commit) or "off". `web_flags`: more flags for web.py.
    """
    name = "greenpipe (acknowledged)"
    if web_processes > 1:
        name = f"greenpipe, {web_processes} web processes"
    running = Running(name)
    argv = [
        PYTHON,
        str(ROOT / "server.py"),
        "--port",
        "0",
        "--handler",
        handler,
        *worker_flags,
    ]
    ports = _workers(running, argv, r"listening on tcp://[^:]+:(\d+)", env=env)
    web = [PYTHON, str(ROOT / "web.py"), "--port", "0", "--workers",
           ",".join(f"127.0.0.1:{p}" for p in ports), "--web-processes", str(web_processes),
           "--dead-letter", "/dev/null", *journal_flags(journal), *web_flags]  # fmt: skip
    _web(running, web, r"serving http://[^:]+:(\d+)", "barrier met")
    if web_processes > 1:
        running.web[0].expect("barrier met", 20, times=web_processes)
    return running


def greenpipe_gunicorn(processes: int = 2) -> Running:
    """web.py under gunicorn -k gevent -w `processes` (greenpipe.gunicorn config)."""
    running = Running(f"greenpipe under gunicorn -w {processes}")
    argv = [PYTHON, str(ROOT / "server.py"), "--port", "0", "--handler", NOOP]
    ports = _workers(running, argv, r"listening on tcp://[^:]+:(\d+)")
    env = {"WORKERS": ",".join(f"127.0.0.1:{p}" for p in ports),
           "DEAD_LETTER": "/dev/null", "JOURNAL_DIR": journal_flags("none")[1],
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    web = [PYTHON, "-m", "gunicorn", "-c", "python:greenpipe.gunicorn", "-w",
           str(processes), "-b", "127.0.0.1:0", "--chdir", str(ROOT), "web:app"]  # fmt: skip
    _web(running, web, r"Listening at: http://[^:]+:(\d+)", env=env)
    running.web[0].expect("barrier met", 20, times=processes)
    return running


def greenpipe_hosts() -> Running:
    """web.py (root namespace) + 3 server.py, each in its own network namespace.

    Raises RuntimeError naming what is missing without root, ip or iptables.
    """
    from tests.faults.harness import Netns, NetnsUnavailable

    running = Running("greenpipe, workers on 3 hosts (namespaces)")
    try:
        hosts = [Netns(name=f"gpb{os.getpid() % 10000}{i}", subnet=160 + i)
                 for i in range(3)]  # fmt: skip
    except NetnsUnavailable as exc:
        raise RuntimeError(f"workers on other hosts: {exc}") from None
    running.cleanup = [host.close for host in hosts]
    addresses = []
    for index, host in enumerate(hosts):
        argv = [*host.exec_prefix(), PYTHON, str(ROOT / "server.py"), "--port", "0",
                "--host", host.inner_ip, "--handler", NOOP]  # fmt: skip
        proc = _proc(running, f"worker{index + 1}", argv)
        port = int(proc.expect(r"listening on tcp://[^:]+:(\d+)", 20)[1])
        running.workers.append(proc)
        addresses.append(f"{host.inner_ip}:{port}")
    web = [PYTHON, str(ROOT / "web.py"), "--port", "0", "--workers",
           ",".join(addresses), "--dead-letter", "/dev/null",
           *journal_flags("none")]  # fmt: skip
    _web(running, web, r"serving http://[^:]+:(\d+)", "barrier met")
    return running


def greenpipe_plain() -> Running:
    running = Running("greenpipe -> plain PULL (at most once)")
    argv = [PYTHON, "-m", "bench.pull_counter", "--port", "0"]
    ports = _workers(running, argv, r"listening on tcp://[^:]+:(\d+)")
    web = [PYTHON, str(ROOT / "web.py"), "--port", "0", "--workers",
           ",".join(f"push+tcp://127.0.0.1:{p}" for p in ports), "--dead-letter", "/dev/null",
           *journal_flags("none")]  # fmt: skip
    _web(running, web, r"serving http://[^:]+:(\d+)", "barrier met")
    return running


def _redis(running: Running) -> str:
    port = free_port()
    _proc(running, "redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no"]).expect("Ready to accept", 20)  # fmt: skip
    running.redis_url = f"redis://127.0.0.1:{port}/0"
    return running.redis_url


def celery() -> Running:
    running = Running("Flask + Celery on Redis")
    env = {"BENCH_REDIS": _redis(running)}
    for index in range(3):
        proc = _proc(running, f"worker{index + 1}", [
            PYTHON, "-m", "celery", "-A", "bench.queues:celery_app", "worker", "--pool",
            "gevent", "-c", "100", "-n", f"w{index + 1}@bench", "--loglevel", "INFO",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ], env)  # fmt: skip
        proc.expect("ready", 30)
        running.workers.append(proc)
    _web(running, [PYTHON, "-m", "bench.queues", "web", "celery", "--port", "0"],
         r"serving http://[^:]+:(\d+)", env=env)  # fmt: skip
    return running


def rq() -> Running:
    running = Running("Flask + RQ on Redis")
    url = _redis(running)
    env = {"BENCH_REDIS": url}
    for index in range(3):
        proc = _proc(running, f"worker{index + 1}", [
            PYTHON, "-m", "rq.cli", "worker", "--url", url, "--name", f"w{index + 1}", "bench",
        ], env)  # fmt: skip
        proc.expect(r"Listening on", 30)
        running.workers.append(proc)
    _web(running, [PYTHON, "-m", "bench.queues", "web", "rq", "--port", "0"],
         r"serving http://[^:]+:(\d+)", env=env)  # fmt: skip
    return running


def availability() -> dict[str, str | None]:
    """Why a system cannot run here (None: it can)."""
    no_redis = (
        None
        if shutil.which("redis-server")
        else ("redis-server not installed (apt-get install redis-server)")
    )
    return {
        "bare": None,
        "greenpipe": None,
        "plain": None,
        "multi": None,
        "celery": no_redis or (None if find_spec("celery") else "celery not installed"),
        "rq": no_redis or (None if find_spec("rq") else "rq not installed"),
    }


SYSTEMS: dict[str, Callable[[], Running]] = {
    "bare": bare,
    "greenpipe": greenpipe,
    "plain": greenpipe_plain,
    "multi": lambda: greenpipe(web_processes=2),
    "celery": celery,
    "rq": rq,
}


def wait_caught_up(
    running: Running, sent: int, timeout: float
) -> tuple[float | None, int]:
    """For queue systems: seconds until `sent` jobs were handled (None: not within timeout)."""
    started = time.monotonic()
    handled = 0
    while time.monotonic() - started < timeout:
        live = running.handled_live()
        if live is None:
            return 0.0, sent
        handled = live[0]
        if handled >= sent:
            return time.monotonic() - started, handled
        time.sleep(0.2)  # sleep-ok: polling a Redis counter
    return None, handled
