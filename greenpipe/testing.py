"""Run greenpipe's processes for tests, benchmarks and load runs; keep books.

`Proc` starts a process whose output a thread collects line by line;
`expect(pattern)` blocks until such a line appears, with a deadline and a
failure message naming what did not happen. `start_worker` and `start_web`
start server.py and web.py on ports the OS picks and return once they said
they are ready; `start_scheduler`, ``greenpipe schedule``. Nothing here
sleeps to wait. `record` is a handler that keeps its own books
(HANDLER=greenpipe.testing:record), so a run can be checked against what the
handlers saw, not only the web's counters.

The test suite, `python -m bench`, `python -m loadtest.scenario` and the fault
suite all use this module; an application's own tests may too.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from greenpipe.jobs import Job

PYTHON = sys.executable
# A source checkout runs the entry points themselves (python web.py); an
# installed greenpipe runs the same code as python -m greenpipe web.
ROOT = Path(__file__).resolve().parent.parent
_CHECKOUT = (ROOT / "web.py").is_file() and (ROOT / "server.py").is_file()


def entry(name: str) -> list[str]:
    """The command line of an entry point: "web" or "worker"."""
    if _CHECKOUT:
        return [PYTHON, str(ROOT / ("web.py" if name == "web" else "server.py"))]
    return [PYTHON, "-m", "greenpipe", name]


def flags(options: Mapping[str, Any]) -> list[str]:
    """``{"max_pending": 5}`` -> ``["--max-pending", "5"]``."""
    argv = []
    for name, value in options.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    return argv


class Proc:
    """A child process with its merged stdout/stderr gathered into `lines`."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.popen = subprocess.Popen(
            argv,
            cwd=cwd or ROOT,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self.pid = self.popen.pid
        self.lines: list[str] = []
        self.expected_exit: int | None = 0  # None: any (the test killed it)
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def tail(self, count: int = 20) -> str:
        with self._changed:
            return "\n".join(self.lines[-count:])

    def matches(self, pattern: str) -> list[re.Match[str]]:
        regex = re.compile(pattern)
        with self._changed:
            return [m for m in map(regex.search, self.lines) if m]

    def expect(
        self, pattern: str, timeout: float = 10.0, times: int = 1
    ) -> re.Match[str]:
        """Wait until `times` lines (counted from the start) match; return the last."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [m for m in map(regex.search, self.lines) if m]
                if len(found) >= times:
                    return found[times - 1]
                left = deadline - time.monotonic()
                if left <= 0 or (
                    self.popen.poll() is not None and not self._reader.is_alive()
                ):
                    state = (
                        "running"
                        if self.popen.poll() is None
                        else (f"exited {self.popen.returncode}")
                    )
                    raise AssertionError(
                        f"{self.name} ({state}): {len(found)} of {times} lines "
                        f"matching {pattern!r} within {timeout} s; last lines:\n"
                        f"{self.tail()}"
                    )
                self._changed.wait(min(left, 0.5))

    def signal(self, signum: int) -> None:
        if signum in (signal.SIGKILL, signal.SIGSTOP):
            self.expected_exit = None
        self.popen.send_signal(signum)

    def wait_exit(self, timeout: float = 5.0) -> int:
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)
            raise AssertionError(
                f"{self.name} did not exit within {timeout} s (killed); last lines:\n"
                f"{self.tail()}"
            ) from None
        self._reader.join(5)
        return code

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, then wait; fail with the last lines if it overruns."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGCONT)  # in case a test froze it
            self.popen.send_signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status)[1])

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))


def free_port() -> int:
    """A port nothing listens on now (for a process that must be told it in
    advance), below the OS's ephemeral range: see `ports_in_a_row`. One from
    bind(0) could be taken by any outgoing connection before the process
    bound it (seen for OPS_PORT and Locust's master port)."""
    return ports_in_a_row(1)


def ports_in_a_row(count: int = 2) -> int:
    """A port P such that P .. P + count - 1 are free now, below the range the
    OS hands out for bind(0) and outgoing connections (WEB_PROCESSES' OPS_PORT
    and the ports after it, bound later, some again after a restart).

    A port picked by bind(0) is in that range: a client's connection, or
    another test's free_port(), can take P + 1 (or P, between a process's
    death and its replacement) before the web binds it. Below it, only
    another caller of this function can, and it picks at random.
    """
    low = _ephemeral_low()
    rng = random.SystemRandom()
    for _ in range(100):
        base = rng.randrange(10_000, low - count)
        held = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
        return base
    raise AssertionError(f"no {count} free ports in a row below {low} in 100 tries")


def _ephemeral_low() -> int:
    """The lowest port of the OS's ephemeral range (Linux's; 32768 elsewhere)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as file:
            return max(int(file.read().split()[0]), 10_100)
    except (OSError, ValueError, IndexError):
        return 32_768


class Web:
    """A running web.py and a small HTTP client for it."""

    def __init__(self, proc: Proc, port: int) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, dict[str, str], Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            raw = resp.read()
            return resp.status, dict(resp.getheaders()), _json_or_text(raw)
        finally:
            conn.close()

    def get(self, path: str, **kw: Any) -> tuple[int, dict[str, str], Any]:
        return self.request("GET", path, **kw)

    def post(self, path: str, payload: Any = None, **kw: Any):
        headers = kw.pop("headers", {})
        body = kw.pop("body", None)
        if payload is not None:
            body = json.dumps(payload)
            headers = {"Content-Type": "application/json", **headers}
        return self.request("POST", path, body=body, headers=headers, **kw)

    def stats(self) -> dict[str, Any]:
        status, _, body = self.get("/stats")
        assert status == 200, f"/stats answered {status}: {body}"
        return body

    def worker_stats(self) -> list[dict[str, Any]]:
        return self.stats()["workers"]

    def wait_settled(self, timeout: float = 20.0) -> dict[str, Any]:
        """Poll /stats until every accepted job is acknowledged or dead-lettered."""
        return poll_until(
            self.stats,
            lambda s: (
                s["pending"] == 0
                and s["in_flight"] == 0
                and s["acked"] + s["dead_lettered"] + s["pushed"] >= s["accepted"]
            ),
            timeout,
            "every accepted job done (acked + dead_lettered + pushed == accepted)",
        )

    def wait_state(self, index: int, states: Iterable[str], timeout: float = 10.0):
        wanted = set(states)
        return poll_until(
            self.worker_stats,
            lambda workers: workers[index]["state"] in wanted,
            timeout,
            f"worker {index} in state {sorted(wanted)}",
        )


def _json_or_text(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


def poll_until(
    probe: Callable[[], Any],
    done: Callable[[Any], bool],
    timeout: float,
    what: str,
    interval: float = 0.05,
) -> Any:
    """Call `probe` until `done(result)`; for states with no event to block on."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if done(last):
            return last
        time.sleep(interval)  # sleep-ok: polling a state with a deadline
    raise AssertionError(f"not within {timeout} s: {what}; last seen: {last}")


def start_worker(
    name: str = "worker",
    port: int = 0,
    env: Mapping[str, str] | None = None,
    prefix: list[str] | None = None,
    timeout: float = 15.0,
    **options: Any,
) -> tuple[Proc, int]:
    """Start server.py; returns it and its port once it logged its endpoint.

    `prefix` runs it under another command (e.g. ``ip netns exec NS``).
    """
    argv = [*(prefix or []), *entry("worker"), "--port", str(port), *flags(options)]
    proc = Proc(name, argv, env=dict(env or {}))
    match = proc.expect(r"listening on tcp://[^:]+:(\d+)", timeout=timeout)
    return proc, int(match[1])


def start_web(
    workers: Iterable[str],
    name: str = "web",
    env: Mapping[str, str] | None = None,
    wait_barrier: bool = True,
    timeout: float = 15.0,
    **options: Any,
) -> Web:
    """Start web.py on a free port for `workers`; by default waits for the barrier.

    With ``web_processes=K`` it waits until all K processes serve (and, by
    default, until each has met its barrier), not just the first.
    """
    argv = [*entry("web"), "--port", "0", "--workers", ",".join(workers)]
    proc = Proc(name, argv + flags(options), env=dict(env or {}))
    times = int(options.get("web_processes", 1))
    try:
        serving = r"serving http://[^:]+:(\d+)"
        port = int(proc.expect(serving, timeout=timeout, times=times)[1])
        if wait_barrier:
            proc.expect("barrier met", timeout=timeout, times=times)
    except AssertionError:
        proc.stop()
        raise
    return Web(proc, port)


def start_scheduler(
    handler: str,
    workers: Iterable[str],
    name: str = "scheduler",
    env: Mapping[str, str] | None = None,
    wait: bool = True,
    timeout: float = 15.0,
    **options: Any,
) -> Proc:
    """Start ``greenpipe schedule`` for `handler`'s periodic jobs and `workers`.

    By default returns once it logged its schedules (it holds its lock then);
    ``wait=False`` returns at once (for a scheduler expected to refuse).
    """
    argv = [PYTHON, "-m", "greenpipe", "schedule", "--handler", handler,
            "--workers", ",".join(workers), *flags(options)]  # fmt: skip
    proc = Proc(name, argv, env=dict(env or {}))
    if wait:
        try:
            proc.expect(r"schedule: pid \d+ pushing", timeout=timeout)
        except AssertionError:
            proc.stop()
            raise
    return proc


_record_fds: dict[str, int] = {}


def write_record(job: Job) -> None:
    """Append "job-id attempt" to $GREENPIPE_RECORD_DIR/<worker port>.ids.

    One unbuffered write per job: the file is the handler's own account.
    """
    directory = os.environ.get("GREENPIPE_RECORD_DIR")
    if not directory:
        return
    port = job.worker.rsplit(":", 1)[1]
    fd = _record_fds.get(port)
    if fd is None:
        path = os.path.join(directory, f"{port}.ids")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        _record_fds[port] = fd
    os.write(fd, f"{job.id} {job.attempt}\n".encode())


def record(job: Job) -> None:
    """A handler that only keeps books (see `write_record`)."""
    write_record(job)


def read_records(directory: Path) -> dict[str, list[tuple[str, int]]]:
    """What `record` wrote: {worker port: [(job id, attempt), ...]}."""
    records: dict[str, list[tuple[str, int]]] = {}
    for path in sorted(directory.glob("*.ids")):
        entries = []
        for line in path.read_text().splitlines():
            job_id, attempt = line.split()
            entries.append((job_id, int(attempt)))
        records[path.stem] = entries
    return records
