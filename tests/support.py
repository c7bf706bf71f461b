"""Helpers for tests that run web.py and server.py as real processes.

`Proc` starts a process whose output a thread collects line by line;
`expect(pattern)` blocks until such a line appears, with a deadline and a
failure message naming what did not happen. Nothing here sleeps to wait.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


class Proc:
    """A child process with its merged stdout/stderr gathered into `lines`."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        cwd: Path = ROOT,
    ) -> None:
        self.name = name
        self.argv = argv
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.popen = subprocess.Popen(
            argv,
            cwd=cwd,
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
                        f"{self.name} ({state}): {len(found)} of {times} lines matching "
                        f"{pattern!r} within {timeout} s; last lines:\n{self.tail()}"
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
    """A port nothing listens on now (for a process that must be told it in advance)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


class Load:
    """Concurrent HTTP clients on keep-alive connections, counting what comes back.

    Runs `total` requests over `concurrency` threads, or until `stop()` when
    total is None. Results: (status, job id or None, seconds) per request.
    """

    def __init__(
        self,
        port: int,
        total: int | None,
        concurrency: int,
        path: str = "/jobs",
        payload: Any = None,
        method: str = "POST",
        timeout: float = 30.0,
    ) -> None:
        self.port = port
        self.total = total
        self.concurrency = concurrency
        self.path = path
        self.body = json.dumps(payload if payload is not None else {}).encode()
        self.method = method
        self.timeout = timeout
        self.results: list[tuple[int, str | None, float]] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._issued = 0
        self._stopped = threading.Event()
        self.started = threading.Event()  # set once every client sent a request
        self._first = 0
        self._pool = ThreadPoolExecutor(concurrency)
        self._futures = [self._pool.submit(self._client) for _ in range(concurrency)]

    def _take(self) -> bool:
        with self._lock:
            if self._stopped.is_set() or (
                self.total is not None and self._issued >= self.total
            ):
                return False
            self._issued += 1
            return True

    def _client(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        first = True
        headers = {"Content-Type": "application/json"} if self.method == "POST" else {}
        while self._take():
            start = time.monotonic()
            try:
                conn.request(self.method, self.path, body=self.body if self.method == "POST" else None,
                             headers=headers)  # fmt: skip
                if first:
                    first = False
                    with self._lock:
                        self._first += 1
                        if self._first == self.concurrency:
                            self.started.set()
                resp = conn.getresponse()
                raw = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                with self._lock:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection(
                    "127.0.0.1", self.port, timeout=self.timeout
                )
                continue
            elapsed = time.monotonic() - start
            job_id = None
            if resp.status == 202:
                job_id = json.loads(raw)["id"]
            with self._lock:
                self.results.append((resp.status, job_id, elapsed))
        conn.close()

    def stop(self) -> None:
        self._stopped.set()

    def done_count(self) -> int:
        with self._lock:
            return len(self.results) + len(self.errors)

    def join(self, timeout: float = 60.0) -> Load:
        deadline = time.monotonic() + timeout
        for future in self._futures:
            future.result(timeout=max(0.1, deadline - time.monotonic()))
        self._pool.shutdown()
        return self

    def statuses(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for status, _, _ in self.results:
            counts[status] = counts.get(status, 0) + 1
        return counts

    def accepted_ids(self) -> set[str]:
        return {
            job_id for status, job_id, _ in self.results if status == 202 and job_id
        }


def read_records(directory: Path) -> dict[str, list[tuple[str, int]]]:
    """What the recording handler wrote: {worker port: [(job id, attempt), ...]}."""
    records: dict[str, list[tuple[str, int]]] = {}
    for path in sorted(directory.glob("*.ids")):
        entries = []
        for line in path.read_text().splitlines():
            job_id, attempt = line.split()
            entries.append((job_id, int(attempt)))
        records[path.stem] = entries
    return records


def job_seq(job_id: str) -> int:
    """The web's sequence number inside a job id ("3f9a1c2b-1a" -> 26)."""
    return int(job_id.rsplit("-", 1)[1], 16)
