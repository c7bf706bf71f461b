"""Test-only helpers: concurrent HTTP load, job ids, a PATH without tools.

The process helpers (`Proc`, `start_web`, `start_worker`, `Web`, ...) live in
`greenpipe.testing`, shared with the benchmarks, the load tests and the fault
suite; they are re-exported here for the tests' convenience.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import gevent

from greenpipe import protocol
from greenpipe.testing import (  # noqa: F401 (re-exported)
    PYTHON,
    ROOT,
    Proc,
    Web,
    flags,
    free_port,
    poll_until,
    read_records,
    start_web,
    start_worker,
)


class ScriptedWeb:
    """A web without sockets in front of a real `Worker` (not bound, not serving).

    A test hands the worker what a web would send, in one receive batch when
    it calls twice without yielding; the worker's answers (READY, ACKS) go
    nowhere, and `results` reads its acknowledgements before they are sent.
    """

    def __init__(self, worker: Any, ident: bytes = b"web") -> None:
        self.worker, self.ident = worker, ident
        worker._on_message([ident, *protocol.encode_hello(0.5, "scripted web")])
        self.peer = worker.peers.by_ident[ident]

    def jobs(self, *records: bytes) -> None:
        self.worker._on_message([self.ident, protocol.JOBS, b"".join(records)])

    def cancel(self, *ids: bytes) -> None:
        self.worker._on_message([self.ident, *protocol.encode_cancel(ids)])

    def results(
        self, count: int, timeout: float = 5.0
    ) -> list[tuple[bytes, int, bytes]]:
        """The next `count` answers (id, status, payload), within `timeout` s."""
        out: list[tuple[bytes, int, bytes]] = []
        failure = AssertionError(f"{count} answers from the worker within {timeout} s")
        with gevent.Timeout(timeout, failure):
            while True:
                peer = self.peer
                out += [(raw_id, protocol.OK, b"") for raw_id in peer.ok]
                out += [protocol.decode_result(frame) for frame in peer.results]
                peer.ok, peer.results = [], []
                if len(out) >= count:
                    return out
                self.worker._wake.wait()  # set at every answer
                self.worker._wake.clear()


def job_record(raw_id: bytes, name: str = "", attempt: int = 1) -> bytes:
    """One job record as a web sends it (POST /jobs, body {})."""
    return protocol.encode_job(raw_id, attempt, b"POST", b"/jobs", b"", b"",
                               b"{}", name=name.encode())  # fmt: skip


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


def assert_round_robin_order(record_dir, ports: Sequence[int | str],
                             ids: Sequence[str]) -> None:  # fmt: skip
    """`ids`, the first jobs a web accepted, in the order it accepted them (a
    client's, one request at a time): job k went to worker k mod N, in
    configured order. Ids are random (issue 31), so the order is the client's."""
    where = {job_id: port for port, entries in read_records(record_dir).items()
             for job_id, _ in entries}  # fmt: skip
    for k, job_id in enumerate(ids):
        expected = str(ports[k % len(ports)])
        assert where.get(job_id) == expected, (
            f"job {k + 1} ({job_id}) went to the worker on port "
            f"{where.get(job_id)}, round-robin says {expected}"
        )


def assert_round_robin_counts(record_dir, ports: Sequence[int | str]) -> None:
    """Each web process (its id prefix) that accepted n jobs gave worker i of
    N exactly len(range(i, n, N)): round-robin from its first job, by counts
    (jobs accepted concurrently have no order a client can see)."""
    per_web: dict[str, Counter[str]] = {}
    for port, entries in read_records(record_dir).items():
        for job_id, _ in entries:
            per_web.setdefault(job_id.split("-", 1)[0], Counter())[port] += 1
    for prefix, counts in per_web.items():
        n = sum(counts.values())
        expected = {str(p): len(range(i, n, len(ports))) for i, p in enumerate(ports)}
        got = {str(p): counts.get(str(p), 0) for p in ports}
        assert got == expected, (
            f"web {prefix}: {n} jobs as {got}, round-robin {expected}"
        )


OPTIONAL_TOOLS = ("wrk", "iptables", "redis-server", "promtool", "chromium", "ab")


def path_without(tools: Iterable[str], directory: Path) -> str:
    """A PATH on which `tools` cannot be found and everything else still can.

    Fills `directory` with links to every executable on the current PATH
    except those named, the way a fresh machine without them looks to a
    program that asks ``shutil.which``.
    """
    hidden = set(tools)
    directory.mkdir(parents=True, exist_ok=True)
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if not folder or not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            target = os.path.join(folder, name)
            link = directory / name
            if name in hidden or link.exists() or not os.access(target, os.X_OK):
                continue
            link.symlink_to(target)
    return str(directory)


def handled_ids(record_dir) -> Counter[str]:
    """How many times each job id was handled, from the workers' records."""
    counts: Counter[str] = Counter()
    for entries in read_records(record_dir).values():
        counts.update(job_id for job_id, _ in entries)
    return counts


def chromium() -> str | None:
    """Headless Chromium's path, or None. Looked up when asked, not at import:
    `make test-without-tools` hides it from PATH after this module is loaded."""
    names = ("chromium", "chromium-browser", "google-chrome")
    return next((p for p in map(shutil.which, names) if p), None)


def render(url: str, budget_ms: int = 4000, screenshot: Path | None = None) -> str:
    """The page's DOM after its scripts ran for `budget_ms` (headless Chromium).

    Chromium's virtual time runs the page's timers without waiting for them
    (while a fetch is out, it waits for the fetch): a one-second poll loop
    runs about budget_ms / 1000 times. With `screenshot`, writes a PNG instead.
    """
    browser = chromium()
    assert browser, "chromium is not installed (apt-get install chromium)"
    argv = [browser, "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-dev-shm-usage", "--hide-scrollbars", "--no-first-run",
            f"--virtual-time-budget={budget_ms}", "--window-size=1300,1250"]  # fmt: skip
    argv += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    done = subprocess.run([*argv, url], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def read_runs(record_dir: Path) -> dict[str, list[dict]]:
    """What tests/retry_handlers.py's handlers noted: {job id: [run, ...]}."""
    runs: dict[str, list[dict]] = {}
    for path in record_dir.glob("*.runs"):
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            runs.setdefault(entry["id"], []).append(entry)
    return runs
