"""The security suite's attacks, each measured the same way.

A `System` is a real web.py and one real server.py (the recording handler),
with CURVE on or off. While an attack runs, a `Prober` sends one legitimate
request every 20 ms on a new connection and times it. A `Result` says what
the attack tried, how many jobs it got handled (must be 0 with CURVE on: any
handled job id the web never accepted), what the legitimate traffic felt,
and whether the processes' file descriptors and memory came back.

Used by tests/security/test_security.py (short) and by
``python -m tests.security --report`` (docs/security.md).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.auth

from greenpipe import protocol
from greenpipe.curve import write_keypair
from greenpipe.testing import (
    Proc,
    Web,
    poll_until,
    read_records,
    start_web,
    start_worker,
)

# ZMTP 3.0 greeting with the NULL mechanism (RFC 23), as a real peer sends it.
GREETING_NULL = (
    b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00")
    + b"\x00" + b"\x00" * 31
)  # fmt: skip


@dataclass
class Result:
    case: str
    curve: bool
    attempts: int
    injected: int
    http_requests: int
    http_failures: int
    p99_ms: float
    max_ms: float
    fds: tuple[int, int]  # web and worker, before -> after (their sums)
    fds_after: tuple[int, int]
    rss_kib: tuple[int, int]  # web, before -> after
    note: str = ""


@dataclass
class System:
    """web.py + one server.py in `root`, CURVE on or off, short HTTP deadlines."""

    root: Path
    curve: bool
    max_connections: int = 50
    header_timeout: float = 2.0
    body_timeout: float = 2.0
    idle_timeout: float = 3.0
    procs: list[Proc] = field(default_factory=list)

    def start(self) -> System:
        self.records = self.root / "records"
        self.records.mkdir(parents=True, exist_ok=True)
        keys, allow = self.root / "keys", self.root / "allow"
        if not (keys / "web.key").exists():
            for name in ("web", "worker", "intruder"):
                write_keypair(str(keys), name)
            allow.mkdir(exist_ok=True)
            (allow / "web.key").write_bytes((keys / "web.key").read_bytes())
        self.keys = keys
        worker_flags = {}
        web_flags = {}
        if self.curve:
            worker_flags = {"curve_secret": keys / "worker.key_secret",
                            "curve_allow": allow}  # fmt: skip
            web_flags = {"curve_secret": keys / "web.key_secret",
                         "curve_server": keys / "worker.key"}  # fmt: skip
        env = {"GREENPIPE_RECORD_DIR": str(self.records)}
        self.worker, self.worker_port = start_worker(
            "worker", 0, env, handler="tests.handlers:record",
            **worker_flags,
        )  # fmt: skip
        self.procs.append(self.worker)
        self.web: Web = start_web(
            [f"tcp://127.0.0.1:{self.worker_port}"], "web",
            journal_dir="off", dead_letter=self.root / "dead.jsonl",
            max_connections=self.max_connections,
            header_timeout=self.header_timeout, body_timeout=self.body_timeout,
            idle_timeout=self.idle_timeout, heartbeat=0.2, heartbeat_timeout=2,
            **web_flags,
        )  # fmt: skip
        self.procs.append(self.web.proc)
        return self

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()

    def handled(self) -> set[str]:
        return {job_id for entries in read_records(self.records).values()
                for job_id, _ in entries}  # fmt: skip

    def worker_stats(self) -> dict:
        return self.web.worker_stats()[0]

    def keypair(self, name: str) -> tuple[bytes, bytes]:
        return zmq.auth.load_certificate(str(self.keys / f"{name}.key_secret"))

    def server_key(self) -> bytes:
        return zmq.auth.load_certificate(str(self.keys / "worker.key"))[0]


class Prober:
    """One legitimate request every `every` seconds, on a new connection."""

    def __init__(self, port: int, every: float = 0.02) -> None:
        self.port = port
        self.every = every
        self.times: list[float] = []
        self.failures: list[str] = []
        self.ids: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            started = time.monotonic()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/")
                response = conn.getresponse()
                body = response.read()
                conn.close()
                if response.status != 202:
                    self.failures.append(f"{response.status} {body[:80]!r}")
                else:
                    self.ids.add(body.split(b'"')[3].decode())
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
            self.times.append(time.monotonic() - started)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def _fds(system: System) -> tuple[int, int]:
    return system.web.proc.open_fds(), system.worker.open_fds()


def measure(system: System, case: str, attack: Callable[[System, int], str],
            attempts: int) -> Result:  # fmt: skip
    """Run `attack` with a prober beside it; wait for resources to come back."""
    before = _fds(system)
    rss = system.web.proc.rss_kib()
    prober = Prober(system.web.port)
    try:
        note = attack(system, attempts)
        poll_until(lambda: len(prober.times), lambda n: n >= 10, 10,
                   "10 legitimate requests during the attack")  # fmt: skip
    finally:
        prober.stop()
    after = poll_until(lambda: _fds(system),
                       lambda fds: fds[0] <= before[0] + 2 and fds[1] <= before[1] + 2,
                       20, f"file descriptors back near {before} after {case}",
                       )  # fmt: skip
    poll_until(lambda: system.handled() >= prober.ids, bool, 10,
               "every legitimate job handled")  # fmt: skip
    injected = len(system.handled() - prober.ids - _earlier(system))
    _remember(system)
    times = sorted(prober.times) or [0.0]
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    return Result(case, system.curve, attempts, injected, len(prober.times),
                  len(prober.failures), p99 * 1000, times[-1] * 1000, before,
                  after, (rss, system.web.proc.rss_kib()),
                  note + (f"; legit failures: {prober.failures[:3]}"
                          if prober.failures else ""))  # fmt: skip


_seen: dict[int, set[str]] = {}


def _earlier(system: System) -> set[str]:
    """Job ids handled before this case (legit or injected by an earlier one)."""
    return _seen.get(id(system), set())


def _remember(system: System) -> None:
    _seen[id(system)] = system.handled()


# -- attacks on a worker's port -----------------------------------------------------


def _raw(port: int, payload: bytes) -> float | None:
    """Connect, send `payload`; seconds until the peer closed (None: not in 4 s)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=4) as sock:
        try:
            sock.sendall(payload)
            _until_closed(sock)
        except TimeoutError:
            return None  # still open
    return time.monotonic() - started


def _until_closed(sock: socket.socket) -> None:
    """Read until the peer closes (EOF or a reset); TimeoutError if it does not."""
    try:
        data = sock.recv(4096)
        while data:
            data = sock.recv(4096)
    except TimeoutError:
        raise
    except OSError:  # a reset is a close too
        return


def _closed(took: list[float | None]) -> str:
    closed = [t for t in took if t is not None]
    text = f"{len(closed)} of {len(took)} closed by the worker"
    if closed:
        text += f", median after {statistics.median(closed):.2f} s"
    if len(closed) < len(took):
        text += "; the rest still open after 4 s (HANDSHAKE_IVL is 3 s)"
    return text


def random_bytes(system: System, attempts: int) -> str:
    return _closed(
        [_raw(system.worker_port, os.urandom(4096)) for _ in range(attempts)]
    )


def fake_greeting(system: System, attempts: int) -> str:
    """A NULL greeting, then garbage where the handshake should go on."""
    payload = GREETING_NULL + os.urandom(512)
    return _closed([_raw(system.worker_port, payload) for _ in range(attempts)])


def stalled_handshake(system: System, attempts: int) -> str:
    """Half a greeting, then silence: the worker's HANDSHAKE_IVL (3 s) ends it."""
    socks = [socket.create_connection(("127.0.0.1", system.worker_port), timeout=10)
             for _ in range(attempts)]  # fmt: skip
    started = time.monotonic()
    closed = []
    for sock in socks:
        sock.sendall(GREETING_NULL[:10])
    for sock in socks:
        with contextlib.suppress(TimeoutError):
            _until_closed(sock)
            closed.append(time.monotonic() - started)
        sock.close()
    return (f"{len(closed)} of {attempts} closed by the worker, the last after "
            f"{max(closed, default=float('nan')):.1f} s")  # fmt: skip


def _peer(system: System, keys: tuple[bytes, bytes] | None, server: bytes | None):
    """A DEALER to the worker: NULL, or CURVE with `keys` and `server`."""
    context = zmq.Context.instance()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        sock.curve_publickey, sock.curve_secretkey = keys
        sock.curve_serverkey = server
    sock.connect(f"tcp://127.0.0.1:{system.worker_port}")
    return sock


def _inject(sock, count: int, tag: str, frame_size: int = 0) -> bool:
    """Say HELLO; if the worker answers READY, send `count` jobs. True if READY."""
    sock.send_multipart(protocol.encode_hello(1.0, f"attacker {tag}"))
    # ms; a new web's READY waits for its share of the worker's credit: a cut
    # from the web that holds it all, confirmed by that web's next PING.
    if not sock.poll(1500):
        return False
    frames = sock.recv_multipart()
    if frames[0] != protocol.READY:
        return False
    if frame_size:
        sock.send_multipart([protocol.JOBS, os.urandom(frame_size)])
        return True
    records = [protocol.encode_job(f"attack{tag}-{i:010d}".encode(), 1, b"POST",
                                   b"/jobs", b"", b"application/json", b"{}")
               for i in range(count)]  # fmt: skip
    sock.send_multipart([protocol.JOBS, b"".join(records)])
    sock.poll(1000)  # acknowledgements, if the jobs ran
    return True


def _peers(system, attempts, keys, server, tag, frame_size=0) -> str:
    ready = 0
    for i in range(attempts):
        sock = _peer(system, keys, server)
        try:
            ready += _inject(sock, 5, f"{tag}{i}", frame_size)
        finally:
            sock.close(0)
    return f"{ready} of {attempts} peers got READY"


def null_peer(system: System, attempts: int) -> str:
    """A plain ZeroMQ peer (NULL mechanism) speaking greenpipe's protocol."""
    return _peers(system, attempts, None, None, "null")


def random_server_key(system: System, attempts: int) -> str:
    """A CURVE peer that does not know the worker's key (guesses one)."""
    return _peers(system, attempts, zmq.curve_keypair(), zmq.curve_keypair()[0],
                  "guess")  # fmt: skip


def unlisted_client(system: System, attempts: int) -> str:
    """The right server key, but a client key the allowlist does not list."""
    before = system.worker_stats().get("refused", 0)
    note = _peers(system, attempts, system.keypair("intruder"), system.server_key(),
                  "unlisted")  # fmt: skip
    if system.curve:
        refused = poll_until(lambda: system.worker_stats()["refused"],
                             lambda n: n >= before + attempts, 5,
                             f"{attempts} refusals counted in /stats")  # fmt: skip
        note += f"; the worker counted {refused - before} refused handshakes"
    return note


def oversized(system: System, attempts: int) -> str:
    """An authorised peer sends a frame over MAX_FRAME: its connection is dropped."""
    keys = system.keypair("web") if system.curve else None
    server = system.server_key() if system.curve else None
    return _peers(system, attempts, keys, server, "big", frame_size=20 << 20) + (
        ", each sent a 20 MiB frame (MAX_FRAME 16 MiB + 64 KiB)"
    )


# -- attacks on the web's HTTP port ----------------------------------------------------


def _hold(port: int, count: int, send: Callable[[socket.socket], None],
          seconds: float) -> tuple[int, int]:  # fmt: skip
    """Open `count` connections doing `send`; hold `seconds`. (cut, answered 4xx)."""
    socks = []
    for _ in range(count):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=seconds + 5)
        except OSError:
            continue
        socks.append(sock)
        send(sock)
    time.sleep(seconds)  # sleep-ok: the attack holds its connections this long
    cut = answered = 0
    for sock in socks:
        sock.setblocking(True)
        sock.settimeout(0.5)
        try:
            data: bytes | None = sock.recv(64)
        except TimeoutError:
            data = None  # still open: not cut
        except OSError:
            data = b""  # reset: cut
        if data is not None:
            cut += 1
            answered += data.startswith((b"HTTP/1.1 4", b"HTTP/1.1 5"))
        sock.close()
    return cut, answered


def idle_http(system: System, attempts: int) -> str:
    """Connections that send nothing, twice MAX_CONNECTIONS of them."""
    cut, _ = _hold(system.web.port, attempts, lambda s: None,
                   system.header_timeout + 1)  # fmt: skip
    return f"{cut} of {attempts} idle connections closed by the web"


def slowloris(system: System, attempts: int) -> str:
    """Headers a few bytes at a time, never finished."""

    def start(sock: socket.socket) -> None:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-a: ")

    cut, answered = _hold(system.web.port, attempts, start, system.header_timeout + 1)
    return f"{cut} of {attempts} cut ({answered} with 408)"


def partial_body(system: System, attempts: int) -> str:
    """A body announced as 1000 bytes, 10 sent, then silence."""

    def start(sock: socket.socket) -> None:
        sock.sendall(b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
                     + b"x" * 10)  # fmt: skip

    cut, answered = _hold(system.web.port, attempts, start, system.body_timeout + 1)
    return f"{cut} of {attempts} cut ({answered} with 408); no job created"


def header_flood(system: System, attempts: int) -> str:
    """300 header lines, or one header of 100 KB."""
    many = b"".join(b"X-%d: y\r\n" % i for i in range(300))
    big = b"X-Big: " + b"a" * 100_000 + b"\r\n"
    codes = []
    for i in range(attempts):
        with socket.create_connection(("127.0.0.1", system.web.port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n" + (many if i % 2 else big)
                      + b"\r\n")  # fmt: skip
            codes.append(s.recv(12)[9:12].decode() or "closed")
    return "answers: " + ", ".join(f"{c} x{codes.count(c)}" for c in sorted(set(codes)))


ZMQ_CASES: dict[str, Callable[[System, int], str]] = {
    "random bytes at the worker port": random_bytes,
    "fake ZMTP greeting (NULL) then garbage": fake_greeting,
    "handshake that stalls": stalled_handshake,
    "NULL-mechanism peer speaking greenpipe": null_peer,
    "CURVE peer with a random server key": random_server_key,
    "CURVE peer, right server key, unlisted client key": unlisted_client,
    "authorised peer, frame over MAX_FRAME": oversized,
}
HTTP_CASES: dict[str, Callable[[System, int], str]] = {
    "idle HTTP connections (2x MAX_CONNECTIONS)": idle_http,
    "slow headers (slowloris)": slowloris,
    "body stops half way": partial_body,
    "header flood (300 lines / 100 KB)": header_flood,
}
