"""The web's journal: every job written before its 202, replayed after a crash.

A journal is a directory of numbered slots, one per web process; each process
holds an exclusive ``flock`` on its slot's lock file (the kernel drops it on
``kill -9``), so no two processes ever write one journal, and a process that
starts finds an orphaned slot and adopts it. A slot holds numbered segment
files of records::

    u32 length | u32 crc32(type + payload) | u8 type | payload

JOB records carry everything needed to send the job again; ACK records the ids
a worker acknowledged (appended, never synced: a lost ACK record costs one
duplicate). A segment whose jobs are all acknowledged is deleted, so the
journal's size follows what is owed, not the history. On open, a torn tail (a
record cut short by a crash) is cut off with a warning; a bad record followed
by good ones is corruption: what can be read is salvaged, the segment is moved
aside and an error logged (or, with JOURNAL_CORRUPT=refuse, start is refused).

Only the dispatcher greenlet writes: one ``write`` per group of jobs, and with
JOURNAL_SYNC=batch one ``fdatasync`` per group, run in gevent's thread pool so
the event loop keeps turning.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import gevent

from greenpipe.errors import ConfigError, GreenpipeError
from greenpipe.jobs import Envelope

log = logging.getLogger(__name__)

JOB = 1  # a job accepted: enough to send it again
ACK = 2  # ids acknowledged (space-separated)
KEYS = 3  # idempotency keys still in their window, carried into a new segment

_HEAD = struct.Struct("!IIB")  # length of type + payload, crc32, type
# attempt, then the lengths of id, name, method, path, query, content type,
# idempotency key, body.
_JOBREC = struct.Struct("!BBBBHHHHI")
SEGMENT_ROLL = 4 << 20  # bytes: past this, a drained segment is replaced
INLINE_SYNC_S = 0.002  # an fdatasync quicker than this runs on the event loop
INLINE_PROBE = 1000  # syncs sent to the thread pool after a slow one
MAX_SLOTS = 64
SYNC_MODES = ("none", "batch")


class JournalError(GreenpipeError):
    """The journal cannot be written; jobs are refused (503) until it can."""


@dataclass
class Replay:
    """What opening a journal found: the jobs still owed, and what was wrong."""

    jobs: list[Envelope] = field(default_factory=list)
    keys: dict[str, tuple[str, float]] = field(default_factory=dict)
    torn: int = 0  # torn tails cut off
    salvaged: int = 0  # damaged segments moved aside
    adopted: list[int] = field(default_factory=list)  # orphaned slots taken over


def encode_job(job: Envelope, key: bytes = b"") -> bytes:
    return b"".join(
        (
            _JOBREC.pack(
                job.attempt,
                len(job.key),
                len(job.name),
                len(job.method),
                len(job.path),
                len(job.query),
                len(job.content_type),
                len(key),
                len(job.body),
            ),
            job.key,
            job.name,
            job.method,
            job.path,
            job.query,
            job.content_type,
            key,
            job.body,
        )
    )


def decode_job(payload: bytes) -> tuple[Envelope, bytes]:
    attempt, *sizes = _JOBREC.unpack_from(payload)
    fields, offset = [], _JOBREC.size
    for size in sizes:
        fields.append(payload[offset : offset + size])
        offset += size
    raw_id, name, method, path, query, ctype, key, body = fields
    job = Envelope(raw_id.decode("ascii"), method, path, query, ctype, body, None, name)
    job.attempt = attempt
    return job, key


def record(kind: int, payload: bytes) -> bytes:
    body = bytes((kind,)) + payload
    return _HEAD.pack(len(body), zlib.crc32(body), kind) + payload


def read_records(data: bytes) -> tuple[list[tuple[int, bytes]], int, bool]:
    """Records of a segment: (readable records, offset of the first bad byte, damaged).

    A clean segment gives (records, len(data), False). A torn tail (bad bytes
    with no readable record after them) gives the records before it and False.
    Bad bytes with readable records after them are damage: every readable
    record is returned (the reader skips to the next valid one) and True.
    """
    records: list[tuple[int, bytes]] = []
    offset, size, first_bad, damaged = 0, len(data), -1, False
    while offset < size:
        found = _record_at(data, offset)
        if found is None:
            following = _next_record(data, offset + 1)
            if first_bad < 0:
                first_bad = offset
            if following < 0:
                break  # nothing readable after: a torn tail (or the damage's end)
            damaged, offset = True, following
            continue
        kind, payload, offset = found
        records.append((kind, payload))
    return records, (size if first_bad < 0 else first_bad), damaged


def _record_at(data: bytes, offset: int) -> tuple[int, bytes, int] | None:
    if len(data) - offset < _HEAD.size:
        return None
    length, crc, kind = _HEAD.unpack_from(data, offset)
    end = offset + _HEAD.size - 1 + length
    if length < 1 or end > len(data) or kind not in (JOB, ACK, KEYS):
        return None
    body = data[offset + _HEAD.size - 1 : end]
    if zlib.crc32(body) != crc:
        return None
    return kind, body[1:], end


def _next_record(data: bytes, start: int) -> int:
    """Offset of the next readable record at or after `start`, or -1.

    Readable means a chain of valid records from there to the end of the
    segment: a job's body may hold bytes that look like a record (a client
    chooses them), and a torn tail must not turn such bytes into a job.
    """
    for at in range(start, len(data) - _HEAD.size + 1):
        offset = at
        while (found := _record_at(data, offset)) is not None:
            offset = found[2]
        if offset == len(data) and offset > at:
            return at
    return -1


class Journal:
    """One web process's journal slot (see the module docstring).

    Jobs carry the number of the segment they were written to
    (``Envelope.segment``); `acked` counts them down, and a drained segment
    that is not the one being written is deleted at once.
    """

    def __init__(
        self, directory: str, sync: str = "none", corrupt: str = "salvage"
    ) -> None:
        if sync not in SYNC_MODES:
            raise ConfigError(f"JOURNAL_SYNC: expected none or batch, got {sync!r}")
        self.directory = os.path.abspath(directory)
        self.sync = sync
        self.corrupt = corrupt
        self.slot = -1
        self.path = ""  # the slot's folder
        self._lock_fd = -1
        self._fd = -1
        self._segment = 0  # number of the segment being written
        self._size = 0  # its size in bytes (the last good record's end)
        self._owed: dict[int, int] = {}  # segment -> jobs not yet acknowledged
        self._syncing = False
        self._acks: list[bytes] = []  # ACK records not yet written (see acked)
        self._pool_syncs = 0  # syncs still to run in the thread pool (see _sync)
        self.slow_syncs = 0
        self.written = self.bytes_written = self.failures = 0
        self.groups = 0  # group commits (writes of jobs): written / groups per write
        self.healthy = True
        self.last_error = ""

    # -- opening and replay ------------------------------------------------------

    def open(self) -> Replay:
        """Take a free slot, adopt orphaned ones, and return what is owed."""
        try:
            os.makedirs(self.directory, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"JOURNAL_DIR: cannot create {self.directory!r} ({exc}); give a "
                "writable directory, or JOURNAL_DIR=off to run without a journal"
            ) from None
        self.slot, self._lock_fd = self._take_slot()
        self.path = self._slot_dir(self.slot)
        os.makedirs(self.path, exist_ok=True)
        replay = Replay()
        self._read_slot(self.path, replay)
        for job in replay.jobs:
            self._owed[job.segment] = self._owed.get(job.segment, 0) + 1
        orphans = []  # (slot, its lock fd): held until their jobs are ours
        for other in range(MAX_SLOTS):
            folder = self._slot_dir(other)
            if other == self.slot or not os.path.isdir(folder):
                continue
            if not self._segments(folder):
                continue
            fd = self._lock(other)
            if fd >= 0:  # no live process holds it: an orphan
                self._read_slot(folder, replay, adopted=True)
                orphans.append((other, fd))
        self._start_segment(max(self._segments(self.path), default=0) + 1)
        adopted = [job for job in replay.jobs if job.segment < 0]
        # Written here (durably, in batch mode) before the orphans' files go.
        self._write_batch([record(JOB, encode_job(job)) for job in adopted], adopted)
        for other, fd in orphans:
            folder = self._slot_dir(other)
            for name in os.listdir(folder):
                os.unlink(os.path.join(folder, name))
            os.close(fd)
            replay.adopted.append(other)
        if orphans:
            log.warning(
                "journal: adopted orphaned slots %s (%d jobs owed)",
                ", ".join(str(slot) for slot, _ in orphans),
                len(adopted),
            )
        self._drop_drained()
        return replay

    def _slot_dir(self, slot: int) -> str:
        return os.path.join(self.directory, f"slot-{slot}")

    def _lock(self, slot: int) -> int:
        """The slot's lock fd if this process could take it, else -1."""
        path = os.path.join(self.directory, f"slot-{slot}.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return -1
        return fd

    def _take_slot(self) -> tuple[int, int]:
        for slot in range(MAX_SLOTS):
            fd = self._lock(slot)
            if fd >= 0:
                return slot, fd
        raise ConfigError(
            f"JOURNAL_DIR: all {MAX_SLOTS} slots of {self.directory!r} are held by "
            "running web processes; stop some, or give this one its own JOURNAL_DIR"
        )

    @staticmethod
    def _segments(folder: str) -> list[int]:
        numbers = []
        for name in os.listdir(folder):
            if name.startswith("seg-") and name.endswith(".log"):
                try:
                    numbers.append(int(name[4:-4]))
                except ValueError:
                    continue
        return sorted(numbers)

    def _read_slot(self, folder: str, replay: Replay, adopted: bool = False) -> None:
        jobs: dict[str, Envelope] = {}
        for number in self._segments(folder):
            path = os.path.join(folder, f"seg-{number:08d}.log")
            with open(path, "rb") as file:
                data = file.read()
            records, end, damaged = read_records(data)
            if end < len(data):
                self._damaged(path, data, end, damaged, records, replay)
            for kind, payload in records:
                if kind == JOB:
                    job, key = decode_job(payload)
                    job.segment = -1 if adopted else number
                    jobs[job.id] = job
                    if key:
                        replay.keys[key.decode("latin-1")] = (job.id, time.time())
                elif kind == ACK:
                    for raw in payload.split():
                        jobs.pop(raw.decode("ascii", "replace"), None)
                elif kind == KEYS:
                    for line in payload.split(b"\n"):
                        if line:
                            key, job_id, at = line.rsplit(b" ", 2)
                            replay.keys[key.decode("latin-1")] = (
                                job_id.decode("ascii"),
                                float(at),
                            )
        replay.jobs.extend(jobs.values())

    def _damaged(
        self,
        path: str,
        data: bytes,
        end: int,
        damaged: bool,
        records: list[tuple[int, bytes]],
        replay: Replay,
    ) -> None:
        if not damaged:
            replay.torn += 1
            log.warning(
                "journal: %s ends in a torn record (%d bytes after offset %d, from a "
                "crash while writing); cut off, the %d bytes before it replayed",
                path,
                len(data) - end,
                end,
                end,
            )
            with open(path, "r+b") as file:
                file.truncate(end)
            return
        if self.corrupt == "refuse":
            raise JournalError(
                f"journal: {path} is damaged at offset {end} with readable records "
                "after it (not a torn tail); move it aside by hand, or start with "
                "JOURNAL_CORRUPT=salvage to replay what can be read"
            )
        replay.salvaged += 1
        aside = f"{path}.damaged-{int(time.time())}"
        log.error(
            "journal: %s is damaged at offset %d with readable records after it; "
            "replaying the %d records that can be read, moved the file to %s",
            path,
            end,
            len(records),
            aside,
        )
        os.rename(path, aside)
        with open(path, "wb") as file:  # what can be read, as a clean segment
            file.write(b"".join(record(kind, payload) for kind, payload in records))

    # -- writing --------------------------------------------------------------

    def _start_segment(self, number: int) -> None:
        path = os.path.join(self.path, f"seg-{number:08d}.log")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._segment, self._size = fd, number, os.fstat(fd).st_size
        self._owed.setdefault(number, 0)

    def append_jobs(
        self, jobs: Sequence[Envelope], keys: Sequence[bytes] | None = None
    ) -> None:
        """Write `jobs` in one go (and fdatasync in batch mode) before their 202s.

        Raises JournalError (the jobs must be refused) if the write or the sync
        failed; the journal is cut back to its last good record first, so a
        later successful write never follows a half record.
        """
        records = [
            record(JOB, encode_job(job, keys[i] if keys else b""))
            for i, job in enumerate(jobs)
        ]
        self._write_batch(records, jobs)

    def _write_batch(self, records: list[bytes], jobs: Sequence[Envelope]) -> None:
        if not records:
            return
        if self._acks:  # ride along: one write for both
            records = self._acks + records
            self._acks = []
        data = b"".join(records)
        start, segment = self._size, self._segment
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, f"short write: {written} of {len(data)}")
            self._size = start + len(data)
            if self.sync == "batch":
                # ACK records may be appended while a thread syncs (this
                # greenlet waits cooperatively); the segment must not roll.
                self._syncing = True
                try:
                    self._datasync(data, start)
                finally:
                    self._syncing = False
        except OSError as exc:
            # A rewrite after a failed sync went to a new segment: cut that one.
            self._failed(exc, start if self._segment == segment else 0)
            raise JournalError(
                f"cannot journal {len(records)} jobs to {self.path} "
                f"({exc.strerror or exc}); free space or fix permissions there"
            ) from None
        for job in jobs:
            job.segment = self._segment
        self._owed[self._segment] = self._owed.get(self._segment, 0) + len(jobs)
        self.written += len(jobs)
        self.groups += 1
        self.bytes_written += len(data)
        if not self.healthy:
            log.warning("journal: %s is writable again", self.path)
            self.healthy = True

    def _sync(self) -> None:
        """fdatasync, inline while syncs are quick, else in gevent's thread pool.

        Measured here: an fdatasync takes 0.2 ms (p99 0.5 ms), and the thread
        pool's round trip (a task, a GIL hand-off back to the busy event loop)
        cost about a fifth of the web's throughput in batch mode. So a sync runs
        inline while the last ones took under INLINE_SYNC_S; one slower sync
        sends the next INLINE_PROBE syncs to the thread pool, so a slow or
        stalling disk never holds the event loop for long.
        """
        if self._pool_syncs:
            self._pool_syncs -= 1
            gevent.get_hub().threadpool.apply(os.fdatasync, (self._fd,))
            return
        started = time.monotonic()
        os.fdatasync(self._fd)
        if time.monotonic() - started > INLINE_SYNC_S:
            self._pool_syncs = INLINE_PROBE
            self.slow_syncs += 1

    def _datasync(self, data: bytes, start: int) -> None:
        """fdatasync; on failure, write the batch again to a new segment.

        A failed fdatasync may have dropped the dirty pages (the kernel marks
        them clean): syncing again would "succeed" on lost data (PostgreSQL's
        data_sync_retry). So the batch is rewritten from memory, once.
        """
        try:
            self._sync()
            return
        except OSError as exc:
            log.error("journal: fdatasync of %s failed (%s); rewriting", self.path, exc)
        os.ftruncate(self._fd, start)  # (ACK records written meanwhile go too)
        self._start_segment(self._segment + 1)
        written = os.write(self._fd, data)
        if written != len(data):
            raise OSError(errno.ENOSPC, f"short write: {written} of {len(data)}")
        self._size = len(data)
        self._sync()

    def _failed(self, exc: OSError, start: int) -> None:
        self.failures += 1
        self.last_error = f"{self.path}: {exc.strerror or exc}"
        if self.healthy:
            log.error("journal: cannot write %s (%s); refusing jobs", self.path, exc)
        self.healthy = False
        try:
            os.ftruncate(self._fd, start)  # no half record before the next one
            self._size = start
        except OSError as cut:
            log.error("journal: cannot cut %s back (%s)", self.path, cut)

    def acked(self, jobs: Iterable[Envelope]) -> None:
        """Record acknowledgements; drop segments fully acknowledged.

        The ACK record is kept in memory and written with the next group of
        jobs (or by `flush_acks`, every heartbeat): a lost ACK record costs
        one duplicate at a replay, a write per ACKS message costs a syscall.
        """
        ids, drained = [], False
        owed = self._owed
        for job in jobs:
            ids.append(job.key)
            number = job.segment
            if number >= 0:
                owed[number] -= 1
                drained |= not owed[number]
        if not ids:
            return
        self._acks.append(record(ACK, b" ".join(ids)))
        if drained:
            self._drop_drained()

    def flush_acks(self) -> None:
        """Write the ACK records kept in memory (each heartbeat, and at close)."""
        if not self._acks or self._fd < 0:
            return
        data, self._acks = b"".join(self._acks), []
        try:
            os.write(self._fd, data)
            self._size += len(data)
        except OSError as exc:  # only duplicates at a replay: say so, go on
            self._failed(exc, self._size)

    def _drop_drained(self) -> None:
        dropped = False
        for number, count in list(self._owed.items()):
            if count:
                continue
            if number == self._segment:
                if self._size <= SEGMENT_ROLL or self._syncing:
                    continue
                self._start_segment(number + 1)
            self._unlink(number)
            del self._owed[number]
            dropped = True
        if dropped:
            # Keys journaled with the jobs of a dropped segment must outlive it.
            self.carry_keys(self.keys())

    def keys(self) -> dict[str, tuple[str, float]]:
        """The idempotency keys in their window (the dispatcher replaces this)."""
        return {}

    def carry_keys(self, keys: dict[str, tuple[str, float]]) -> None:
        """Write the idempotency keys still in their window to the current segment."""
        if not keys:
            return
        lines = b"\n".join(
            b"%s %s %.3f" % (key.encode("latin-1"), job_id.encode(), at)
            for key, (job_id, at) in keys.items()
        )
        data = record(KEYS, lines)
        try:
            os.write(self._fd, data)
            self._size += len(data)
        except OSError as exc:
            self._failed(exc, self._size)

    def _unlink(self, number: int) -> None:
        try:
            os.unlink(os.path.join(self.path, f"seg-{number:08d}.log"))
        except FileNotFoundError:
            pass

    def size(self) -> int:
        """Bytes of this slot's segments on disk."""
        total = 0
        for number in self._segments(self.path):
            try:
                total += os.path.getsize(
                    os.path.join(self.path, f"seg-{number:08d}.log")
                )
            except OSError:
                continue
        return total

    def close(self) -> None:
        """Close the segment and release the slot (a sibling may adopt what is owed)."""
        self.flush_acks()
        for fd in (self._fd, self._lock_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._lock_fd = -1
