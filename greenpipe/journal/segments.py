"""The journal's record codec: framing, JOB/ACK/CANCEL/KEY payloads, and the
reader that tells a torn tail from damage. Pure: no files, no clock.

A record is ``u32 length | u32 crc32(type + payload) | u8 type | payload``.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Iterator

from greenpipe.jobs import DEFAULT_QUEUE, Envelope

JOB_V1 = 1  # a job, the first layout (read, never written): key Latin-1, no time
ACK = 2  # ids acknowledged (space-separated ASCII)
KEYS_V1 = 3  # keys carried into a new segment, newline-joined (read, never written)
JOB = 4  # a job accepted: enough to send it again, with its key and the key's time
CANCEL = 5  # ids of a group that failed after its write: never replay them
KEY = 6  # one idempotency key in its window (the keys file)
# ids of jobs handed to a worker, one mention per delivery: a replay is their
# next attempt (the deliveries after a job's last JOB record count on top of it)
SENT = 7
# "id@not_before@retries@attempt" of a job that waits (a retry's backoff): the
# wall time it may run again, and how many runs it had.
LATER = 8
# a job of a named queue (not the default one): u8 queue length, the queue,
# then a JOB payload. A default-queue job stays a JOB: unchanged on disk.
JOB_ON = 9
KINDS = frozenset((JOB_V1, ACK, KEYS_V1, JOB, CANCEL, KEY, SENT, LATER, JOB_ON))
JOB_KINDS = frozenset((JOB_V1, JOB, JOB_ON))

_HEAD = struct.Struct("!IIB")  # length of type + payload, crc32, type
# attempt, the key's wall time, then the lengths of id, name, method, path,
# query, content type, key (UTF-8, surrogates kept: any str), body.
_JOB = struct.Struct("!Hd8I")
_JOB_V1 = struct.Struct("!BBBBHHHHI")
_KEY = struct.Struct("!dHI")  # wall time, length of the job id, of the key


def record(kind: int, payload: bytes) -> bytes:
    body = bytes((kind,)) + payload
    return _HEAD.pack(len(body), zlib.crc32(body), kind) + payload


def _text(key: str) -> bytes:
    return key.encode("utf-8", "surrogatepass")


def encode_job(job: Envelope, key: str = "", at: float = 0.0) -> bytes:
    """A JOB payload; `key` is any str (length-prefixed), `at` its wall time."""
    raw_key = _text(key)
    parts = (job.key, job.name, job.method, job.path, job.query, job.content_type,
             raw_key, job.body)  # fmt: skip
    return _JOB.pack(job.attempt, at, *map(len, parts)) + b"".join(parts)


def job_record(job: Envelope, key: str = "", at: float = 0.0) -> bytes:
    """A job's whole record: JOB, or JOB_ON for a job of a named queue."""
    payload = encode_job(job, key, at)
    if job.queue == DEFAULT_QUEUE:
        return record(JOB, payload)
    return record(JOB_ON, bytes((len(job.queue),)) + job.queue + payload)


def decode_job(kind: int, payload: bytes) -> tuple[Envelope, str, float]:
    """(job, key, key's wall time); a JOB_V1 key has no time: -1.0.

    Raises struct.error, IndexError or UnicodeDecodeError on a payload that
    passed its checksum but is not a job (a bug, not a crash): the caller
    treats it as damage.
    """
    if kind == JOB_ON:
        end = 1 + payload[0]
        queue = payload[1:end]
        if len(queue) != payload[0] or not queue:
            raise IndexError(f"job record's queue of {payload[0]} bytes is cut short")
        job, key, at = decode_job(JOB, payload[end:])
        job.queue = queue
        return job, key, at
    if kind == JOB:
        attempt, at, *sizes = _JOB.unpack_from(payload)
        offset = _JOB.size
    else:
        attempt, *sizes = _JOB_V1.unpack_from(payload)
        at, offset = -1.0, _JOB_V1.size
    fields = []
    for size in sizes:
        fields.append(payload[offset : offset + size])
        offset += size
    if offset > len(payload):
        raise IndexError(f"job record of {len(payload)} bytes names {offset}")
    raw_id, name, method, path, query, ctype, raw_key, body = fields
    job = Envelope(raw_id.decode("ascii"), method, path, query, ctype, body, None, name)
    job.attempt = attempt
    if kind == JOB:
        key = raw_key.decode("utf-8", "surrogatepass")
    else:
        key = raw_key.decode("latin-1")
    return job, key, at


def encode_sent(jobs: Iterable[Envelope]) -> bytes:
    """A SENT payload: the ids of jobs handed to a worker, once per delivery."""
    return b" ".join([job.key for job in jobs])


def decode_sent(payload: bytes) -> Iterator[str]:
    for raw_id in payload.split():
        yield raw_id.decode("ascii", "replace")


def encode_later(jobs: Iterable[Envelope]) -> bytes:
    """A LATER payload: each waiting job's not-before time, retries and attempt.

    The time is written exactly (the shortest repr that reads back as the same
    float): rounding ``ceil(t * 1000) / 1000`` could read back one ulp early.
    """
    return b" ".join(
        b"%s@%a@%d@%d" % (job.key, job.not_before, job.retries, job.attempt)
        for job in jobs
    )


def decode_later(payload: bytes) -> Iterator[tuple[str, float, int, int]]:
    """(job id, not-before wall time, retries, attempt) per job of a LATER record."""
    for item in payload.split():
        parts = item.split(b"@")
        if len(parts) != 4:
            continue
        raw_id, not_before, retries, attempt = parts
        try:
            yield raw_id.decode("ascii"), float(not_before), int(retries), int(attempt)
        except (UnicodeDecodeError, ValueError):
            continue


def encode_key(key: str, job_id: str, at: float) -> bytes:
    raw_id, raw_key = job_id.encode("ascii"), _text(key)
    return _KEY.pack(at, len(raw_id), len(raw_key)) + raw_id + raw_key


def decode_key(payload: bytes) -> tuple[str, str, float]:
    """(key, job id, wall time) of a KEY payload."""
    at, id_size, key_size = _KEY.unpack_from(payload)
    start = _KEY.size
    raw_id = payload[start : start + id_size]
    raw_key = payload[start + id_size : start + id_size + key_size]
    return raw_key.decode("utf-8", "surrogatepass"), raw_id.decode("ascii"), at


def decode_keys_v1(payload: bytes) -> list[tuple[str, str, float]]:
    """Keys of a KEYS_V1 record; lines that do not parse are skipped."""
    found = []
    for line in payload.split(b"\n"):
        parts = line.rsplit(b" ", 2)
        if len(parts) == 3:
            try:
                found.append((parts[0].decode("latin-1"), parts[1].decode("ascii"),
                              float(parts[2])))  # fmt: skip
            except ValueError:
                continue
    return found


def decode_segment(data: bytes) -> tuple[list[tuple[int, bytes]], int, bool]:
    """Records of a segment: (readable records, start of a torn tail, damaged).

    A torn tail is only what follows the last valid record: bad bytes with
    valid records after them are damage (``damaged`` is True), whatever comes
    at the end. A clean segment gives (records, len(data), False). After bad
    bytes the reader goes on at the end the bad record's length names if a
    valid record starts there, else at the first offset from which a chain of
    valid records reaches the end exactly (a job's body may hold bytes that
    look like a record: a client chooses them).
    """
    records: list[tuple[int, bytes]] = []
    offset, size, bad, damaged = 0, len(data), -1, False
    while offset < size:
        found = _record_at(data, offset)
        if found is not None:
            if bad >= 0:
                damaged, bad = True, -1
            kind, payload, offset = found
            records.append((kind, payload))
            continue
        if bad < 0:
            bad = offset
        following = -1
        if size - offset >= _HEAD.size:
            length = _HEAD.unpack_from(data, offset)[0]
            end = offset + _HEAD.size - 1 + length
            if length >= 1 and end < size and _record_at(data, end) is not None:
                following = end  # only this record is bad: its length holds
        if following < 0:
            following = _next_chain(data, offset + 1)
        if following < 0:
            break
        offset = following
    return records, (size if bad < 0 else bad), damaged


def _record_at(data: bytes, offset: int) -> tuple[int, bytes, int] | None:
    if len(data) - offset < _HEAD.size:
        return None
    length, crc, kind = _HEAD.unpack_from(data, offset)
    end = offset + _HEAD.size - 1 + length
    if length < 1 or end > len(data) or kind not in KINDS:
        return None
    body = data[offset + _HEAD.size - 1 : end]
    if zlib.crc32(body) != crc:
        return None
    return kind, body[1:], end


def _next_chain(data: bytes, start: int) -> int:
    """Offset of the first chain of valid records from there to the end, or -1."""
    for at in range(start, len(data) - _HEAD.size + 1):
        offset = at
        while (found := _record_at(data, offset)) is not None:
            offset = found[2]
        if offset == len(data) and offset > at:
            return at
    return -1
