"""The greenpipe wire protocol (version 8) between web.py and server.py.

Every message starts with a one-byte kind. The web's DEALER sends web kinds;
the worker's ROUTER sees them behind the connection's routing id and answers on
the same connection. Decoders validate everything: without authentication,
libzmq turns raw bytes sent to a worker's port into ZMTP/1.0 messages, so any
frame may be garbage. They raise `ProtocolError`; nothing here opens a socket.

    web -> worker                       worker -> web
    HELLO  version, heartbeat, name     READY      version, credit, max frame, name,
                                                   the handlers' time limits,
                                                   the job names it runs
    JOBS   jobs (one frame)             ACKS       ids done, [result, result, ...]
    PING   credit seq applied           HEARTBEAT  [figures, [progress]]
    DONE   (nothing more will follow)   BYE        [reason]
    CANCEL ids (one frame)              CREDIT     change, seq

READY's last frame says what the worker can run: the names of its `Handlers`
registry, whether a default handler takes the others (a plain callable
HANDLER takes every name), and the queues it takes jobs from (QUEUES; left
out when that is the default queue alone). The web sends a job only to
workers that run its name and listen on its queue (`greenpipe.routing`); a
HELLO or READY of another version is refused, naming both versions.

A HEARTBEAT may carry the progress its handlers reported since the last one
(``job.progress``): the last report per job, so a handler calling it in a
tight loop costs no message. A worker sends it early, just before an ACKS
that ends a job whose last report has not gone yet: the web keeps that
report with the job's record.

A result says OK (the handler's JSON), FAILED (the error), RETRY (the
handler's policy asks to run it again after a delay: the web holds it until
then) or CANCELLED (the web's CANCEL interrupted it).

A worker's capacity (CONCURRENCY) is shared by every web connected to it:
READY carries a web's first share, CREDIT moves it (a grant at once; a cut
counts as the worker's until the web's next PING says it applied it, so the
jobs a worker holds from all webs never exceed its capacity).

Jobs travel as self-delimiting records packed into one frame, and plain
acknowledgements as one frame of space-separated ids: a batch costs two
frames, not two per job (per-frame calls dominate pyzmq's cost under gevent).
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from greenpipe.errors import ProtocolError
from greenpipe.jobs import DEFAULT_QUEUE, MAX_NOTE, WANTS_REPLY, Job

# 8: READY's names frame may list the worker's queues (SERVES_QUEUES);
# 7: HEARTBEAT's 3rd frame: the handlers' progress reports;
# 6: READY's 5th frame: the job names the worker runs, and its default handler;
# 5: a RETRY's delay in 64-bit ms (32 bits stopped at 49.7 days, below MAX_DELAY),
#    READY's 4th frame: the time limits the worker's handlers declare;
# 4: retries (RETRY results, a job's retries), CANCEL, overrunning handlers;
# 3: shared credit (CREDIT, PING seq); 2: a job carries its name.
VERSION = 8

# web -> worker
HELLO = b"\x01"  # a web asks to send jobs; answered by READY (or BYE with a reason)
JOBS = b"\x02"  # one or more jobs, concatenated in one frame (see encode_job)
PING = b"\x03"  # the web is alive; a worker forgets webs that stay silent
DONE = b"\x04"  # the web sends nothing more on this connection (answers BYE)
CANCEL = b"\x05"  # interrupt these jobs if they run here (space-separated ids)
# worker -> web
READY = b"\x11"  # the worker takes jobs: up to `credit` unacknowledged at once
ACKS = b"\x12"  # ids of jobs done, space-separated; then a frame per result
HEARTBEAT = b"\x13"  # sent from the worker's event loop: proves the loop runs
BYE = b"\x14"  # the worker is leaving (or refuses): send nothing more
CREDIT = b"\x15"  # this web's credit changes by a signed amount (numbered)


# Result status bytes (results travel only for failures and awaited jobs).
OK = 0  # handler returned; payload is its JSON result
FAILED = 1  # handler raised or timed out; payload is the error text (UTF-8)
RETRY = 2  # run it again after a delay: payload is u64 ms, then the error text
CANCELLED = 3  # interrupted by CANCEL; payload says so

# Job flags: WANTS_REPLY (greenpipe.jobs), an HTTP client waits for the result.

_HELLO = struct.Struct("!BI")  # version, heartbeat interval in ms
_READY = struct.Struct("!BIII")  # version, credit, largest frame, credit seq
_LIMIT = struct.Struct("!Bd")  # a READY limit: job name length, seconds; the name
# READY's names frame: one byte of flags, [with SERVES_QUEUES: a count byte and
# that many queue names], then each job name; each name a length byte + UTF-8.
SERVES_DEFAULT = 0x01  # flag: a default handler runs the names not listed
SERVES_QUEUES = 0x02  # flag: the queues follow (else the default queue alone)
# flags, attempt, retries so far, time limit in ms (0: none), then the lengths
# of id, name, method, path, query, content type and body, which follow in that
# order. An empty name means "the path": a forwarded request is named by its path.
_JOB = struct.Struct("!BHHIBBBHHHI")
_DELAY = struct.Struct("!Q")  # a RETRY result's delay, ms
_RESULT = struct.Struct("!BB")  # status, id length; then id, then payload
_CREDIT = struct.Struct("!iI")  # change (signed), sequence number
_PING = struct.Struct("!I")  # the last CREDIT sequence number the web applied

# What a job from web.py adds to its body, at most: the header, a 64-byte id, a
# method, a path and query within pywsgi's 8 KiB request line, a 1 KiB type.
JOB_OVERHEAD = _JOB.size + 64 + 255 + 16 + 8192 + 1024
MAX_JOB_NAME = 255  # bytes of UTF-8
_ID = re.compile(rb"^[A-Za-z0-9_.:-]{1,64}$")
MAX_NAME = 200


def encode_hello(heartbeat_s: float, name: str) -> list[bytes]:
    return [
        HELLO,
        _HELLO.pack(VERSION, round(heartbeat_s * 1000)),
        name.encode()[:MAX_NAME],
    ]


def decode_hello(frames: Sequence[bytes]) -> tuple[int, float, str]:
    """Return (version, heartbeat seconds, web name) from a HELLO message."""
    if len(frames) != 3 or len(frames[1]) != _HELLO.size:
        raise ProtocolError(f"HELLO needs 3 frames with a {_HELLO.size}-byte header")
    version, heartbeat_ms = _HELLO.unpack(frames[1])
    if not 10 <= heartbeat_ms <= 60_000:
        raise ProtocolError(f"HELLO heartbeat {heartbeat_ms} ms is outside 10-60000")
    return version, heartbeat_ms / 1000, _text(frames[2][:MAX_NAME])


def encode_ready(
    credit: int,
    max_frame: int,
    name: str,
    seq: int = 0,
    limits: Mapping[str, float] | None = None,
    serves: Serves | None = None,
) -> list[bytes]:
    """READY: this web's credit (its share of the worker's capacity), the
    CREDIT sequence number that share stands at, the time limits the
    worker's handlers declare (job name -> seconds; the others: JOB_TIMEOUT)
    and the job names it runs (`serves`; None: every name, a plain handler)."""
    header = _READY.pack(VERSION, credit, max_frame, seq)
    records = []
    for job_name, seconds in (limits or {}).items():
        raw = job_name.encode()
        if len(raw) <= MAX_JOB_NAME:  # a longer name never reaches a handler
            records.append(_LIMIT.pack(len(raw), seconds) + raw)
    return [READY, header, name.encode()[:MAX_NAME], b"".join(records),
            encode_serves(serves or EVERYTHING)]  # fmt: skip


DEFAULT_QUEUES = frozenset((DEFAULT_QUEUE,))


class Serves(NamedTuple):
    """What a worker runs, as its READY says: job names, a default handler, and
    the queues it takes jobs from."""

    names: frozenset[bytes]  # UTF-8, as jobs carry them (a path for a request)
    default: bool  # a default handler (or a plain callable) runs every other name
    queues: frozenset[bytes] = DEFAULT_QUEUES  # a job of another queue never comes

    def runs(self, name: bytes, queue: bytes = DEFAULT_QUEUE) -> bool:
        return queue in self.queues and (self.default or name in self.names)

    def describe(self) -> dict[str, Any]:
        """As /stats shows it: the names, sorted, the default, the queues."""
        names = sorted(_text(name) for name in self.names)
        queues = sorted(_text(queue) for queue in self.queues)
        return {"names": names, "default": self.default, "queues": queues}


EVERYTHING = Serves(frozenset(), True)  # a plain handler: every name


def encode_serves(serves: Serves) -> bytes:
    """READY's names frame (a name over MAX_JOB_NAME bytes never reaches a worker)."""
    flags = SERVES_DEFAULT if serves.default else 0
    out = [b""]
    if serves.queues != DEFAULT_QUEUES:
        flags |= SERVES_QUEUES
        out.append(bytes([len(serves.queues)]))
        out.extend(bytes([len(queue)]) + queue for queue in sorted(serves.queues))
    out[0] = bytes([flags])
    for name in sorted(serves.names):
        if len(name) <= MAX_JOB_NAME:
            out.append(bytes([len(name)]) + name)
    return b"".join(out)


def _names(frame: bytes, offset: int, count: int | None) -> tuple[set[bytes], int]:
    """`count` length-prefixed names from `offset` (None: to the end), and the end."""
    names: set[bytes] = set()
    while offset < len(frame) and (count is None or len(names) < count):
        end = offset + 1 + frame[offset]
        if end > len(frame):
            raise ProtocolError(f"READY names cut short at byte {offset}")
        names.add(frame[offset + 1 : end])
        offset = end
    if count is not None and len(names) != count:
        raise ProtocolError(f"READY says {count} queues but lists {len(names)}")
    return names, offset


def decode_serves(frames: Sequence[bytes]) -> Serves:
    """The job names and queues a READY (of this version) says the worker runs."""
    if len(frames) != 5 or not frames[4]:
        raise ProtocolError("READY needs a 5th frame: the job names the worker runs")
    frame = frames[4]
    queues, offset = DEFAULT_QUEUES, 1
    if frame[0] & SERVES_QUEUES:
        if len(frame) < 2 or not frame[1]:
            raise ProtocolError("READY says it lists queues but lists none")
        listed, offset = _names(frame, 2, frame[1])
        queues = frozenset(listed)
    names, _ = _names(frame, offset, None)
    return Serves(frozenset(names), bool(frame[0] & SERVES_DEFAULT), queues)


def decode_ready(frames: Sequence[bytes]) -> tuple[int, int, int, str, int]:
    """Return (version, credit, max frame, worker name, seq) from a READY message."""
    if len(frames) not in (3, 4, 5) or len(frames[1]) < 1:
        raise ProtocolError(f"READY needs 5 frames with a {_READY.size}-byte header")
    if frames[1][0] != VERSION:  # an older worker: its header is shorter
        return frames[1][0], 0, 0, _text(frames[2][:MAX_NAME]), 0
    if len(frames[1]) != _READY.size:
        raise ProtocolError(f"READY needs 5 frames with a {_READY.size}-byte header")
    version, credit, max_frame, seq = _READY.unpack(frames[1])
    return version, credit, max_frame, _text(frames[2][:MAX_NAME]), seq


def decode_limits(frames: Sequence[bytes]) -> dict[bytes, float]:
    """The handlers' own time limits a READY announces: job name -> seconds."""
    frame = frames[3] if len(frames) > 3 else b""
    limits, offset = {}, 0
    while offset < len(frame):
        if offset + _LIMIT.size > len(frame):
            raise ProtocolError(f"READY limits cut short at byte {offset}")
        length, seconds = _LIMIT.unpack_from(frame, offset)
        offset += _LIMIT.size
        if offset + length > len(frame) or not (0 < seconds < math.inf):
            raise ProtocolError(f"READY limit of {seconds!r} s at byte {offset}")
        limits[frame[offset : offset + length]] = seconds
        offset += length
    return limits


def encode_credit(change: int, seq: int) -> list[bytes]:
    return [CREDIT, _CREDIT.pack(change, seq)]


def decode_credit(frames: Sequence[bytes]) -> tuple[int, int]:
    """Return (change, seq) from a CREDIT message."""
    if len(frames) != 2 or len(frames[1]) != _CREDIT.size:
        raise ProtocolError(f"CREDIT needs one {_CREDIT.size}-byte frame")
    change, seq = _CREDIT.unpack(frames[1])
    return change, seq


def encode_ping(seq: int) -> list[bytes]:
    return [PING, _PING.pack(seq)]


def decode_ping(frames: Sequence[bytes]) -> int:
    """The CREDIT sequence number a PING says its web has applied."""
    if len(frames) != 2 or len(frames[1]) != _PING.size:
        raise ProtocolError(f"PING needs one {_PING.size}-byte frame")
    return _PING.unpack(frames[1])[0]


def encode_bye(reason: str = "") -> list[bytes]:
    return [BYE, reason.encode()[:MAX_NAME]] if reason else [BYE]


def decode_bye(frames: Sequence[bytes]) -> str:
    return _text(frames[1][:MAX_NAME]) if len(frames) > 1 else ""


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def encode_job(
    job_id: bytes,
    attempt: int,
    method: bytes,
    path: bytes,
    query: bytes,
    content_type: bytes,
    body: bytes,
    flags: int = 0,
    timeout_ms: int = 0,
    name: bytes = b"",
    retries: int = 0,
) -> bytes:
    """One job as a record; records concatenate into a JOBS frame.

    Lengths must fit their fields: the web checks them before accepting a job.
    """
    head = _JOB.pack(
        flags,
        attempt,  # at most MAX_DELIVERIES per run, runs bounded by a Policy
        retries,
        timeout_ms,
        len(job_id),
        len(name),
        len(method),
        len(path),
        len(query),
        len(content_type),
        len(body),
    )
    return b"".join((head, job_id, name, method, path, query, content_type, body))


def decode_jobs(frame: bytes) -> Iterator[Job]:
    """Parse and validate the job records of a JOBS frame, in order.

    Raises ProtocolError at the first bad record; the ones before it are good,
    the ones after it cannot be found and are lost with it.
    """
    if not frame:
        raise ProtocolError("JOBS frame is empty")
    offset, size = 0, len(frame)
    while offset < size:
        job, offset = _decode_job_at(frame, offset)
        yield job


def decode_job(record: bytes) -> Job:
    """Parse exactly one job record."""
    job, end = _decode_job_at(record, 0)
    if end != len(record):
        raise ProtocolError(f"{len(record) - end} bytes after the job record")
    return job


def _decode_job_at(frame: bytes, offset: int) -> tuple[Job, int]:
    if len(frame) - offset < _JOB.size:
        raise ProtocolError(
            f"job record of {len(frame) - offset} bytes is shorter than its header"
        )
    (flags, attempt, retries, timeout_ms, n_id, n_name, n_method, n_path, n_query,
     n_ctype, n_body) = _JOB.unpack_from(frame, offset)  # fmt: skip
    end_id = offset + _JOB.size + n_id
    end_name = end_id + n_name
    end_method = end_name + n_method
    end_path = end_method + n_path
    end_query = end_path + n_query
    end_ctype = end_query + n_ctype
    end = end_ctype + n_body
    if end > len(frame):
        raise ProtocolError(
            f"job record needs {end - offset} bytes, the frame has "
            f"{len(frame) - offset}"
        )
    raw_id = frame[offset + _JOB.size : end_id]
    if not _ID.match(raw_id):
        raise ProtocolError(f"job id {raw_id[:80]!r} is not 1-64 of [A-Za-z0-9_.:-]")
    if attempt < 1:
        raise ProtocolError(f"job {raw_id.decode()} has attempt 0")
    try:
        name = frame[end_id:end_name].decode("utf-8")
        method = frame[end_name:end_method].decode("ascii")
        path = frame[end_method:end_path].decode("utf-8", "surrogateescape")
        query = frame[end_path:end_query].decode("latin-1")
        content_type = frame[end_query:end_ctype].decode("latin-1")
    except UnicodeDecodeError as exc:
        raise ProtocolError(
            f"job {raw_id.decode()}: undecodable field ({exc})"
        ) from None
    if method and not method.isalpha():
        raise ProtocolError(f"job {raw_id.decode()}: method {method!r} is not a word")
    job = Job(
        raw_id,
        attempt,
        method,
        path,
        query,
        content_type,
        frame[end_ctype:end],
        timeout_ms / 1000,
        bool(flags & WANTS_REPLY),
        name or path,
        retries,
    )
    return job, end


# Handler run time buckets (seconds), the same on every worker; +Inf is implied.
RUN_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0)
# handled, failed, handshakes refused (CURVE's allowlist), handlers running
# past their time limit now, run time sum (s), then a count per bucket (not
# cumulative), +Inf last.
_FIGURES = struct.Struct("!QQQQd" + "Q" * (len(RUN_BUCKETS) + 1))


class Figures(NamedTuple):
    """A worker's own figures, from its heartbeats (all webs together)."""

    handled: int
    failed: int
    refused: int  # handshakes its CURVE allowlist refused
    overrunning: int  # handlers still running past their time limit, now
    run_sum: float  # seconds in handlers
    run_counts: tuple[int, ...]  # per RUN_BUCKETS bucket, +Inf last


def encode_heartbeat(
    handled: int,
    failed: int,
    refused: int,
    run_sum: float,
    run_counts: Sequence[int],
    overrunning: int = 0,
) -> list[bytes]:
    """A HEARTBEAT carrying the worker's own figures (for the web's /metrics)."""
    return [
        HEARTBEAT,
        _FIGURES.pack(handled, failed, refused, overrunning, run_sum, *run_counts),
    ]


# A progress report: id length, done, total (0: none), note length; then the
# id and the note (UTF-8, at most MAX_NOTE bytes).
_PROGRESS = struct.Struct("!BddB")


def encode_progress(reports: Mapping[bytes, tuple[float, float, str]]) -> bytes:
    """HEARTBEAT's progress frame: each job's last report (`Job.progress`,
    whose notes are within MAX_NOTE bytes of UTF-8 already)."""
    pack, parts = _PROGRESS.pack, []
    for raw_id, (done, total, note) in reports.items():
        raw = note.encode()
        parts += (pack(len(raw_id), done, total, len(raw)), raw_id, raw)
    return b"".join(parts)


def decode_progress(frame: bytes) -> list[tuple[bytes, float, float | None, str]]:
    """(job id, done, total or None, note) for each report in the frame."""
    reports, at, size = [], 0, _PROGRESS.size
    while at < len(frame):
        if len(frame) - at < size:
            raise ProtocolError(f"progress report cut short at byte {at}")
        n_id, done, total, n_note = _PROGRESS.unpack_from(frame, at)
        end = at + size + n_id + n_note
        if not n_id or end > len(frame) or n_note > MAX_NOTE:
            raise ProtocolError(f"progress report at byte {at} is malformed")
        if not (math.isfinite(done) and math.isfinite(total)) or done < 0 or total < 0:
            raise ProtocolError(f"progress report at byte {at}: {done} of {total}")
        raw_id = frame[at + size : at + size + n_id]
        note = _text(frame[at + size + n_id : end])
        reports.append((raw_id, done, total or None, note))
        at = end
    return reports


def decode_heartbeat(frames: Sequence[bytes]) -> Figures | None:
    """The worker's `Figures`, None for a bare heartbeat (its progress frame,
    if any, is `decode_progress`'s)."""
    if len(frames) == 1:
        return None
    if len(frames) > 3 or len(frames[1]) != _FIGURES.size:
        raise ProtocolError(f"HEARTBEAT figures must be one {_FIGURES.size}-byte frame")
    handled, failed, refused, overrunning, run_sum, *counts = _FIGURES.unpack(frames[1])
    return Figures(handled, failed, refused, overrunning, run_sum, tuple(counts))


def encode_acks(done: Sequence[bytes], results: Sequence[bytes] = ()) -> list[bytes]:
    """An ACKS message: ids of jobs done without a result, then result frames."""
    return [ACKS, b" ".join(done), *results]


def encode_result(raw_id: bytes, status: int, payload: bytes = b"") -> bytes:
    """A job's outcome that carries something: a failure, or an awaited result."""
    return _RESULT.pack(status, len(raw_id)) + raw_id + payload


def decode_result(frame: bytes) -> tuple[bytes, int, bytes]:
    """Return (job id, status, payload) from one result frame."""
    if len(frame) < 3:
        raise ProtocolError(f"result frame of {len(frame)} bytes is too short")
    status, n_id = frame[0], frame[1]
    if status not in (OK, FAILED, RETRY, CANCELLED) or len(frame) < 2 + n_id:
        raise ProtocolError(f"result frame with status {status} and id length {n_id}")
    return frame[2 : 2 + n_id], status, frame[2 + n_id :]


def retry_payload(delay_s: float, error: bytes) -> bytes:
    """A RETRY result's payload: the delay asked for, then why the run failed."""
    # Capped far beyond any MAX_DELAY (a year): a capped delay is refused, not cut.
    return _DELAY.pack(min(max(0, round(delay_s * 1000)), 2**64 - 1)) + error


def decode_retry(payload: bytes) -> tuple[float, bytes]:
    """(delay in seconds, error text) of a RETRY result's payload."""
    if len(payload) < _DELAY.size:
        raise ProtocolError(f"RETRY payload of {len(payload)} bytes has no delay")
    return _DELAY.unpack_from(payload)[0] / 1000, payload[_DELAY.size :]


def encode_cancel(ids: Sequence[bytes]) -> list[bytes]:
    return [CANCEL, b" ".join(ids)]
