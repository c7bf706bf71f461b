"""The request-framing table: raw requests, the answer RFC 9112/9110 gives, and
what a server actually answered (and whether it made a job).

A `Target` is one HTTP server in front of one real server.py: web.py, a
user's app under ``serve(app)`` (tests/security/user_app.py) or, for
comparison in the report, gunicorn's gevent worker serving web.py. Each case
is sent raw on a new connection; `Target.send` reads the first answer, any
second one (a request smuggled inside the first), and whether the server
closed the connection, and counts the jobs /stats says it accepted meanwhile.

Used by tests/security/test_framing.py and ``python -m tests.security
--report`` (docs/security.md).
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from greenpipe.testing import PYTHON, Proc, Web, flags, start_web, start_worker

H = b"Host: x\r\n"
JOB = b"POST /jobs HTTP/1.1\r\n" + H  # a request that makes a job when let in
# What a proxy that reads the framing the other way forwards as a second request.
SMUGGLED = b"GET /?smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


@dataclass(frozen=True)
class Case:
    name: str
    raw: bytes
    status: int  # what RFC 9112/9110 has a server answer (our choice where it lets us)
    rfc: str  # the section, and the choice made where the RFC gives one

    @property
    def refused(self) -> bool:
        return self.status >= 400


CASES = [
    # -- the table -------------------------------------------------------
    Case("two Content-Length, different values",
         JOB + b"Content-Length: 3\r\nContent-Length: 40\r\n\r\nabc" + SMUGGLED,
         400, "9112 §6.3: invalid length, unrecoverable"),
    Case("whitespace before the colon (Content-Length : 3)",
         JOB + b"Content-Length : 3\r\n\r\nabc", 400, "9112 §5.1: MUST reject"),
    Case("Transfer-Encoding continued on the next line (obs-fold)",
         JOB + b"Transfer-Encoding:\r\n chunked\r\nContent-Length: 3\r\n\r\n"
         b"3\r\nabc\r\n0\r\n\r\n", 400, "9112 §5.2: 400 (or unfold)"),
    Case("Transfer-Encoding: xchunked with Content-Length",
         JOB + b"Transfer-Encoding: xchunked\r\nContent-Length: 3\r\n\r\nabc",
         400, "9112 §6.3: chunked not final: 400 (§6.1's 501 is a SHOULD)"),
    Case("Content-Length and Transfer-Encoding: chunked",
         JOB + b"Content-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"3\r\nabc\r\n0\r\n\r\n" + SMUGGLED,
         400, "9112 §6.1: reject, or TE alone then close; refused here"),
    Case("invalid chunk size",
         JOB + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
         400, "9112 §7.1: invalid chunk"),
    # -- Transfer-Encoding ---------------------------------------------------------
    Case("chunked not the final coding (chunked, gzip)",
         JOB + b"Transfer-Encoding: chunked, gzip\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
         400, "9112 §6.3: MUST 400, then close"),
    Case("unknown coding before chunked (gzip, chunked)",
         JOB + b"Transfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
         501, "9112 §6.1: SHOULD 501"),
    Case("chunked twice (two Transfer-Encoding fields)",
         JOB + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"3\r\nabc\r\n0\r\n\r\n", 400, "9112 §7: chunked at most once"),
    Case("Transfer-Encoding in an HTTP/1.0 request",
         b"POST /jobs HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"3\r\nabc\r\n0\r\n\r\n", 400, "9112 §6.1: framing faulty"),
    Case("chunk data longer than its size",
         JOB + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n",
         400, "9112 §7.1: invalid chunk"),
    # -- Content-Length --------------------------------------------------------------
    Case("Content-Length with a leading +", JOB + b"Content-Length: +3\r\n\r\nabc",
         400, "9110 §8.6: 1*DIGIT"),
    Case("Content-Length negative", JOB + b"Content-Length: -1\r\n\r\nabc",
         400, "9110 §8.6: 1*DIGIT"),
    Case("Content-Length not digits (0x3)", JOB + b"Content-Length: 0x3\r\n\r\nabc",
         400, "9110 §8.6: 1*DIGIT"),
    Case("Content-Length list, different values (3, 40)",
         JOB + b"Content-Length: 3, 40\r\n\r\nabc", 400, "9110 §8.6: invalid"),
    Case("Content-Length list, same values (3, 3)",
         JOB + b"Content-Length: 3, 3\r\n\r\nabc", 400,
         "9110 §8.6: reject or collapse; refused here"),
    Case("two Content-Length fields, same value",
         JOB + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400,
         "9110 §8.6: reject or collapse; refused here"),
    Case("Content-Length empty", JOB + b"Content-Length: \r\n\r\n", 400,
         "9110 §8.6: 1*DIGIT"),
    Case("Content-Length of 20 digits",
         JOB + b"Content-Length: 99999999999999999999\r\n\r\nabc", 413,
         "9110 §8.6: no overflow; 413"),
    # -- Host ----------------------------------------------------------------------
    Case("HTTP/1.1 without Host", b"GET / HTTP/1.1\r\n\r\n", 400,
         "9112 §3.2: MUST 400"),
    Case("two Host fields", b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400,
         "9112 §3.2: MUST 400"),
    Case("Host not host[:port] (x/y)", b"GET / HTTP/1.1\r\nHost: x/y\r\n\r\n", 400,
         "9112 §3.2: MUST 400"),
    # -- field syntax ----------------------------------------------------------------
    Case("obs-fold on any field", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n 2\r\n\r\n",
         400, "9112 §5.2: 400 (or unfold)"),
    Case("whitespace before the first field", b"GET / HTTP/1.1\r\n Host: x\r\n\r\n",
         400, "9112 §2.2: reject (or ignore the line)"),
    Case("CR inside a field value",
         b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\rContent-Length: 3\r\n\r\nabc",
         400, "9110 §5.5: reject (or SP)"),
    Case("NUL inside a field value", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\x002\r\n\r\n",
         400, "9110 §5.5: reject (or SP)"),
    Case("field line ending in a bare LF",
         b"GET / HTTP/1.1\r\nHost: x\nX-A: 1\r\n\r\n", 400,
         "9112 §2.2: bare LF MAY end a line; refused here"),
    Case("field name with a non-token character (X[A])",
         b"GET / HTTP/1.1\r\nHost: x\r\nX[A]: 1\r\n\r\n", 400, "9110 §5.1: token"),
    Case("field line without a colon", b"GET / HTTP/1.1\r\nHost: x\r\nX-A 1\r\n\r\n",
         400, "9112 §5: field-line"),
    Case("101 header lines",
         b"GET / HTTP/1.1\r\n" + H + b"".join(b"X-%d: 1\r\n" % i for i in range(100))
         + b"\r\n", 431, "6585 §5: 431"),
    # -- request line ----------------------------------------------------------------
    Case("two spaces in the request line", b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n",
         400, "9112 §3: SHOULD 400"),
    Case("tab as the request line's separator", b"GET\t/ HTTP/1.1\r\nHost: x\r\n\r\n",
         400, "9112 §3: SHOULD 400"),
    Case("HTTP/0.9 form (no version)", b"GET /\r\n\r\n", 400, "9112 §3: SHOULD 400"),
    Case("version in lower case (http/1.1)", b"GET / http/1.1\r\nHost: x\r\n\r\n",
         400, "9112 §2.3: case-sensitive"),
    Case("HTTP/2.0 in an HTTP/1 request line", b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
         505, "9110 §15.6.6: 505"),
    Case("method not a token (G@T)", b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n", 400,
         "9110 §9.1: token"),
    Case("NUL in the request target", b"GET /a\x00b HTTP/1.1\r\nHost: x\r\n\r\n",
         400, "9112 §3: SHOULD 400"),
    Case("request line ending in a bare CR", b"GET / HTTP/1.1\r\r\nHost: x\r\n\r\n",
         400, "9112 §2.2: bare CR invalid"),
    # -- well-formed: let in -----------------------------------------------------
    Case("well-formed: Content-Length", JOB + b"Content-Length: 3\r\n"
         b"Connection: close\r\n\r\nabc", 202, "accepted: one job"),
    Case("well-formed: Transfer-Encoding: Chunked (any case)",
         JOB + b"Transfer-Encoding: Chunked\r\nConnection: close\r\n\r\n"
         b"3\r\nabc\r\n0\r\n\r\n", 202, "accepted: one job"),
    Case("well-formed: HTTP/1.0 without Host",
         b"POST /jobs HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc", 202,
         "accepted: one job"),
    Case("well-formed: an empty line before the request line",
         b"\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 202,
         "9112 §2.2: SHOULD ignore it"),
]  # fmt: skip


@dataclass
class Answer:
    """What a server did with one raw request."""

    status: int | None  # None: no answer
    closed: bool  # the server closed the connection after answering
    jobs: int  # jobs accepted meanwhile (/stats)
    second: int | None = None  # the status of a second answer (a smuggled request)
    body: bytes = b""

    def show(self) -> str:
        text = str(self.status) if self.status is not None else "no answer"
        if self.second is not None:
            text += f" + {self.second}"
        if self.jobs:
            text = f"**{text}, {self.jobs} job{'s' if self.jobs > 1 else ''}**"
        return text + ("" if self.closed else " (kept open)")


def _answers(sock: socket.socket, deadline: float) -> tuple[list[bytes], bool]:
    """Read until the server closes or `deadline`; the answers and whether it closed."""
    data = b""
    closed = False
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except OSError:  # a reset is a close too
            closed = True
            break
        if not chunk:
            closed = True
            break
        data += chunk
    return _split(data), closed


def _split(data: bytes) -> list[bytes]:
    """Responses one after another (each framed by its Content-Length)."""
    answers = []
    while data.startswith(b"HTTP/"):
        head, _, rest = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length" and value.strip().isdigit():
                length = int(value)
        answers.append(head + b"\r\n\r\n" + rest[:length])
        data = rest[length:]
    return answers


@dataclass
class Target:
    """One HTTP server (`kind`) in front of one real server.py, in `root`."""

    kind: str  # "web.py", "serve(app)" or "gunicorn"
    root: Path
    procs: list[Proc] = field(default_factory=list)

    def start(self) -> Target:
        self.root.mkdir(parents=True, exist_ok=True)
        worker, port = start_worker(f"worker for {self.kind}", 0,
                                    handler="tests.handlers:record")  # fmt: skip
        self.procs.append(worker)
        address = f"127.0.0.1:{port}"
        settings = {"journal_dir": "off", "dead_letter": self.root / "dead.jsonl",
                    "header_timeout": 2, "body_timeout": 2, "idle_timeout": 2}  # fmt: skip
        if self.kind == "web.py":
            self.web = start_web([address], "web", **settings)
            self.procs.append(self.web.proc)  # stopped with the rest
        elif self.kind == "serve(app)":
            argv = [PYTHON, "-m", "tests.security.user_app", "--port", "0",
                    "--workers", address, *flags(settings)]  # fmt: skip
            self.web = self._serving(Proc("serve(app)", argv), r"serving http://"
                                     r"[^:]+:(\d+)")  # fmt: skip
        else:
            env = {"WORKERS": address, "JOURNAL_DIR": "off",
                   "DEAD_LETTER": str(self.root / "dead.jsonl")}  # fmt: skip
            argv = [PYTHON, "-m", "gunicorn", "-k", "gevent", "-c",
                    "python:greenpipe.gunicorn", "-w", "1", "-b", "127.0.0.1:0",
                    "web:app"]  # fmt: skip
            self.web = self._serving(Proc("gunicorn", argv, env),
                                     r"Listening at: http://127\.0\.0\.1:(\d+)")  # fmt: skip
        return self

    def _serving(self, proc: Proc, pattern: str) -> Web:
        self.procs.append(proc)
        port = int(proc.expect(pattern, timeout=20)[1])
        proc.expect("barrier met", timeout=20)
        return Web(proc, port)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(timeout=15)

    def send(self, case: Case, wait_s: float = 5.0) -> Answer:
        """Send `case` raw on a new connection; read until closed or `wait_s`."""
        before = self.web.stats()["accepted"]
        with socket.create_connection(("127.0.0.1", self.web.port), timeout=5) as s:
            s.sendall(case.raw)
            answers, closed = _answers(s, time.monotonic() + wait_s)
        jobs = self.web.stats()["accepted"] - before
        if not answers:
            return Answer(None, closed, jobs)
        status = int(answers[0][9:12])
        second = int(answers[1][9:12]) if len(answers) > 1 else None
        body = answers[0].partition(b"\r\n\r\n")[2]
        return Answer(status, closed, jobs, second, body)


def run(kind: str, root: Path, cases: list[Case] = CASES,
        wait_s: float = 5.0) -> dict[str, Answer]:  # fmt: skip
    """Every case against a fresh `kind` target: {case name: answer}."""
    target = Target(kind, root).start()
    try:
        return {case.name: target.send(case, wait_s) for case in cases}
    finally:
        target.stop()
