"""The web's journal: every job written before its 202, replayed after a crash.

A journal is a directory of numbered slots, one per web process; each process
holds an exclusive ``flock`` on its slot's lock file (the kernel drops it on
``kill -9``), so no two processes ever write one journal, and a process that
starts finds an orphaned slot and adopts it. A slot holds numbered segment
files of records (`greenpipe.segments`) and a keys file:

- JOB records carry everything needed to send the job again, with its
  idempotency key and the key's own wall time; ACK records the ids a worker
  acknowledged (appended, never synced: a lost ACK record costs one
  duplicate); CANCEL records the ids of a group whose write failed after it
  reached the file and could not be cut back.
- Compaction goes oldest segment first (an ACK record always follows its
  job's record, so a segment never goes before one that holds jobs its ACKs
  settle). The segment being written rolls at SEGMENT_ROLL bytes whatever is
  owed; an older segment goes once its jobs are settled, or once its few
  owed jobs (at most a quarter of its bytes) are carried into the current one.
- The keys file (``keys``) holds the keys in their window whose JOB records
  went with their segments; it is rewritten whole and atomically (temporary
  file, sync, rename, sync of the folder) only when a segment holding keyed
  jobs goes, so at most once per SEGMENT_ROLL bytes written.

On open, a torn tail (bad bytes after the last valid record) is cut off with
a warning; bad bytes with valid records after them are damage: what can be
read is salvaged, the segment kept aside and an error logged (or, with
JOURNAL_CORRUPT=refuse, start is refused). Replay deduplicates by job id
across segments and slots, so a crash during a carry or an adoption replays
each job once.

Only the dispatcher writes: one ``write`` per group of jobs, and with
JOURNAL_SYNC=batch one ``fdatasync`` per group. Every sync runs in gevent's
thread pool, never on the event loop: a stalled disk must not freeze the web
(an inline sync cannot be bounded by a timeout). Measured with
``python -m bench.journal_sync`` (4 KiB groups, this machine): idle loop,
0.22 ms a group inline vs 0.37 ms in the pool; a busy loop (a greenlet doing
100 µs of Python work between yields), 0.3 ms inline vs 21-26 ms median and
250 ms p99 in the pool (the pool thread waits for the GIL, 5 ms a hand-off),
while the busy greenlet got 4 times more work done. Group commit absorbs the
latency (the jobs arriving meanwhile form the next, larger group); a stall
inline froze everything for its length. A group interrupted anywhere (OSError,
or a ``gevent.Timeout`` thrown while the thread syncs on) is cut back before
the exception propagates, so its jobs, answered 503, never run; the cut is
durable from the next sync on.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gevent

from greenpipe.errors import ConfigError, GreenpipeError
from greenpipe.jobs import Envelope
from greenpipe.segments import (
    ACK,
    CANCEL,
    JOB,
    JOB_V1,
    KEY,
    KEYS_V1,
    SENT,
    decode_job,
    decode_key,
    decode_keys_v1,
    decode_sent,
    encode_job,
    encode_key,
    encode_sent,
    read_records,
    record,
)

__all__ = ["Journal", "JournalError", "Replay", "encode_job", "record", "JOB"]
log = logging.getLogger(__name__)

SEGMENT_ROLL = 4 << 20  # bytes: past this, the next group goes to a new segment
CARRY_SHARE = 4  # an old segment's owed jobs are carried at 1/CARRY_SHARE its size
MAX_SLOTS = 64
SYNC_MODES = ("none", "batch")
KEYS_FILE = "keys"

Keys = dict[str, tuple[str, float]]  # idempotency key -> (job id, wall time)


class JournalError(GreenpipeError):
    """The journal cannot be written; jobs are refused (503) until it can."""


@dataclass
class Replay:
    """What opening a journal found: the jobs still owed, and what was wrong."""

    jobs: list[Envelope] = field(default_factory=list)
    keys: Keys = field(default_factory=dict)  # each with its own wall time
    torn: int = 0  # torn tails cut off
    salvaged: int = 0  # damaged segments moved aside
    adopted: list[int] = field(default_factory=list)  # orphaned slots taken over


@dataclass
class _Owed:
    job: Envelope
    size: int  # bytes of its record
    key: str
    at: float


@dataclass
class _Segment:
    size: int = 0
    owed: dict[str, _Owed] = field(default_factory=dict)
    keyed: bool = False  # holds a JOB record with a key

    def owed_bytes(self) -> int:
        return sum(entry.size for entry in self.owed.values())


@dataclass
class _Found:
    """What reading the segments of one or more slots found (see `_read_slot`)."""

    jobs: dict[str, tuple[Envelope, int, str, float, int]] = field(default_factory=dict)
    settled: set[str] = field(default_factory=set)  # acknowledged or cancelled
    sent: dict[str, int] = field(default_factory=dict)  # job id -> last attempt sent
    segments: dict[int, _Segment] = field(default_factory=dict)


def _offload(function: Callable[..., Any], *args: Any) -> Any:
    """Run a call that may stall (a sync) in gevent's thread pool (see module)."""
    return gevent.get_hub().threadpool.apply(function, args)


class Journal:
    """One web process's journal slot (see the module docstring).

    `keys` returns the idempotency keys in their window when the keys file is
    rewritten; without it, the journal keeps every key it wrote or replayed.
    Jobs carry the number of the segment that holds them
    (``Envelope.segment``).
    """

    def __init__(
        self,
        directory: str,
        sync: str = "none",
        corrupt: str = "salvage",
        keys: Callable[[], Keys] | None = None,
    ) -> None:
        if sync not in SYNC_MODES:
            raise ConfigError(f"JOURNAL_SYNC: expected none or batch, got {sync!r}")
        self.directory = os.path.abspath(directory)
        self.sync = sync
        self.corrupt = corrupt
        self.slot = -1
        self.path = ""  # the slot's folder
        self._live_keys = keys
        self._own_keys: Keys = {}  # the key source while opening, or without `keys`
        self._lock_fd = -1
        self._fd = -1
        self._segment = 0  # number of the segment being written
        self._size = 0  # its size in bytes (the last good record's end)
        self._segments: dict[int, _Segment] = {}  # live, oldest first
        self._acks: list[bytes] = []  # ACK records not yet written (see acked)
        self._busy = False  # a write and its sync under way: ACK records wait
        self._opening = False
        self.written = self.bytes_written = self.failures = 0
        self.groups = 0  # group commits (writes of jobs): written / groups per write
        self.carried = 0  # owed jobs carried out of an old segment
        self.healthy = True
        self.last_error = ""

    # -- opening and replay ------------------------------------------------------

    def open(self) -> Replay:
        """Take a free slot, adopt orphaned ones, compact, and return what is owed.

        Syncs (in batch mode) run here too: the web does not serve yet.
        Raises ConfigError (no directory, no free slot) or JournalError
        (damage with JOURNAL_CORRUPT=refuse, or the adopted jobs not written).
        """
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
        replay, own = Replay(), _Found()
        self._read_slot(self.path, own, replay)
        orphans: list[tuple[int, int]] = []  # (slot, its lock fd): held until adopted
        theirs = _Found()
        for other in range(MAX_SLOTS):
            folder = self._slot_dir(other)
            if other == self.slot or not os.path.isdir(folder):
                continue
            if not self._numbers(folder) and not os.path.exists(
                os.path.join(folder, KEYS_FILE)
            ):
                continue
            fd = self._lock(other)
            if fd >= 0:  # no live process holds it: an orphan
                self._read_slot(folder, theirs, replay)
                orphans.append((other, fd))
        settled = own.settled | theirs.settled
        for found in (own, theirs):  # a job sent before the crash: its next attempt
            for job_id, (job, *_) in found.jobs.items():
                job.attempt = max(job.attempt, found.sent.get(job_id, 0))
        self._segments = own.segments
        for job_id, (job, number, key, at, size) in own.jobs.items():
            if job_id not in settled:
                job.segment = number
                self._segments[number].owed[job_id] = _Owed(job, size, key, at)
                replay.jobs.append(job)
        self._own_keys, self._opening = dict(replay.keys), True
        self._start_segment(max(own.segments, default=0) + 1)
        adopted = [
            _Owed(job, size, key, at)
            for job_id, (job, _, key, at, size) in theirs.jobs.items()
            if job_id not in settled and job_id not in own.jobs
        ]
        try:  # the adopted jobs, with their keys, here before the orphans' files go
            self._carry(adopted)
            if orphans:
                self._write_keys(self._own_keys)
            self._compact()
        except OSError as exc:
            raise JournalError(
                f"journal: cannot write {self.path} at start ({exc.strerror or exc}); "
                "free space or fix permissions there"
            ) from None
        replay.jobs.extend(entry.job for entry in adopted)
        for other, fd in orphans:
            self._remove_slot(self._slot_dir(other))
            os.close(fd)
            replay.adopted.append(other)
        if orphans:
            slots = ", ".join(str(slot) for slot, _ in orphans)
            log.warning("journal: adopted slots %s (%d owed)", slots, len(adopted))
        if self._live_keys is not None:
            self._own_keys = {}
        self._opening = False
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
    def _numbers(folder: str) -> list[int]:
        numbers = []
        for name in os.listdir(folder):
            if name.startswith("seg-") and name.endswith(".log"):
                try:
                    numbers.append(int(name[4:-4]))
                except ValueError:
                    continue
        return sorted(numbers)

    def _read_slot(self, folder: str, found: _Found, replay: Replay) -> None:
        keys = replay.keys
        for kind, payload in self._read(os.path.join(folder, KEYS_FILE), replay):
            if kind == KEY:
                key, job_id, at = decode_key(payload)
                _newer(keys, key, job_id, at)
        for number in self._numbers(folder):
            path = os.path.join(folder, f"seg-{number:08d}.log")
            segment = found.segments[number] = _Segment(os.path.getsize(path))
            for kind, payload in self._read(path, replay):
                if kind in (JOB, JOB_V1):
                    job, key, at = decode_job(kind, payload)
                    if key:
                        segment.keyed = True
                        at = time.time() if at < 0 else at  # JOB_V1: no time kept
                        _newer(keys, key, job.id, at)
                    size = len(payload) + 9
                    found.jobs[job.id] = (job, number, key, at, size)
                elif kind in (ACK, CANCEL):
                    found.settled.update(raw.decode("ascii", "replace")
                                         for raw in payload.split())  # fmt: skip
                elif kind == SENT:
                    sent = found.sent
                    for job_id, attempt in decode_sent(payload):
                        sent[job_id] = max(attempt, sent.get(job_id, 0))
                elif kind == KEYS_V1:
                    segment.keyed = True
                    for key, job_id, at in decode_keys_v1(payload):
                        _newer(keys, key, job_id, at)

    def _read(self, path: str, replay: Replay) -> list[tuple[int, bytes]]:
        """The records of a file ([] if absent), its torn tail cut, damage handled."""
        try:
            with open(path, "rb") as file:
                data = file.read()
        except FileNotFoundError:
            return []
        records, end, damaged = read_records(data)
        if damaged:
            self._salvage(path, data, end, records, replay)
        elif end < len(data):
            replay.torn += 1
            log.warning(
                "journal: %s ends in a torn record (%d bytes after offset %d, from a "
                "crash while writing); cut off, the %d bytes before it replayed",
                path, len(data) - end, end, end,
            )  # fmt: skip
            fd = os.open(path, os.O_WRONLY)
            try:
                os.ftruncate(fd, end)
            finally:
                os.close(fd)
        return records

    def _salvage(self, path: str, data: bytes, end: int,
                 records: list[tuple[int, bytes]], replay: Replay) -> None:  # fmt: skip
        if self.corrupt == "refuse":
            raise JournalError(
                f"journal: {path} is damaged (bad bytes with readable records after "
                "them, not a torn tail); move it aside by hand, or start with "
                "JOURNAL_CORRUPT=salvage to replay what can be read"
            )
        replay.salvaged += 1
        aside = f"{path}.damaged-{int(time.time())}"
        log.error(
            "journal: %s is damaged at offset %d with readable records after it; "
            "replaying the %d records that can be read, kept the file as %s",
            path, _first_bad(data, records), len(records), aside,
        )  # fmt: skip
        # The clean copy replaces the file in one rename: a crash meanwhile
        # leaves the damaged file, salvaged again at the next start.
        clean = b"".join(record(kind, payload) for kind, payload in records)
        if not os.path.exists(aside):
            os.link(path, aside)
        self._replace(path, clean)

    def _remove_slot(self, folder: str) -> None:
        """An adopted slot's files, oldest segment first (see the module docstring)."""
        names = [f"seg-{number:08d}.log" for number in self._numbers(folder)]
        for name in [*names, KEYS_FILE, KEYS_FILE + ".tmp"]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(folder, name))

    # -- writing --------------------------------------------------------------

    def _start_segment(self, number: int) -> None:
        path = os.path.join(self.path, f"seg-{number:08d}.log")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._segment, self._size = fd, number, os.fstat(fd).st_size
        self._segments.setdefault(number, _Segment(self._size))

    def append_jobs(
        self,
        jobs: Sequence[Envelope],
        keys: Sequence[tuple[str, float]] | None = None,
    ) -> None:
        """Write `jobs` in one go (and fdatasync in batch mode) before their 202s.

        `keys` gives each job's idempotency key and the key's wall time
        (("", 0.0) for none); a key is any str. Compaction due (a roll, a
        carry, the keys file) runs first. Raises JournalError (the jobs must be
        refused) if a write or a sync failed. On any exception, a gevent.Timeout
        too, nothing of the group is left that a later open would replay.
        """
        if not jobs:
            return
        entries = []
        for i, job in enumerate(jobs):
            key, at = keys[i] if keys else ("", 0.0)
            entries.append(_Owed(job, 0, key, at))
        try:
            self._compact(exclude={job.id for job in jobs})
            self._append(entries)
        except OSError as exc:
            raise JournalError(
                f"cannot journal {len(jobs)} jobs to {self.path} "
                f"({exc.strerror or exc}); free space or fix permissions there"
            ) from None
        self.written += len(jobs)
        self.groups += 1
        if self._live_keys is None:
            for entry in entries:
                if entry.key:
                    self._own_keys[entry.key] = (entry.job.id, entry.at)

    def _append(self, entries: list[_Owed]) -> None:
        """Write the JOB records of `entries` (ACK records in memory ride along)."""
        records = []
        for entry in entries:
            data = record(JOB, encode_job(entry.job, entry.key, entry.at))
            entry.size = len(data)
            records.append(data)
        acks, self._acks = self._acks, []
        try:
            self._write(b"".join(acks + records), [e.job.key for e in entries])
        except BaseException:
            self._acks[:0] = acks
            raise
        segment = self._segments[self._segment]
        for entry in entries:
            entry.job.segment = self._segment
            segment.owed[entry.job.id] = entry
            segment.keyed |= bool(entry.key)
        if not self.healthy:
            log.warning("journal: %s is writable again", self.path)
            self.healthy = True

    def _write(self, data: bytes, ids: list[bytes]) -> None:
        """Append `data` (and sync it in batch mode); on failure, leave none of it.

        Any exception (an OSError, or a gevent.Timeout thrown while a thread
        syncs) cuts the file back to where it was, or if that fails, writes a
        CANCEL record for `ids`, before it propagates.
        """
        start, segment = self._size, self._segment
        self._busy = True
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, f"short write: {written} of {len(data)}")
            self._size = start + len(data)
            if self.sync == "batch":
                self._datasync(data, start)
        except BaseException as exc:
            self._undo(exc, start if self._segment == segment else 0, ids)
            raise
        finally:
            self._busy = False
        self._segments[self._segment].size = self._size
        self.bytes_written += len(data)

    def _datasync(self, data: bytes, start: int) -> None:
        """fdatasync; on failure, write the batch again to a new segment.

        A failed fdatasync may have dropped the dirty pages (the kernel marks
        them clean): syncing again would "succeed" on lost data (PostgreSQL's
        data_sync_retry). So the batch is rewritten from memory, once.
        """
        try:
            _offload(os.fdatasync, self._fd)
            return
        except OSError as exc:
            log.error("journal: fdatasync of %s failed (%s); rewriting", self.path, exc)
        os.ftruncate(self._fd, start)
        self._segments[self._segment].size = start
        self._start_segment(self._segment + 1)
        written = os.write(self._fd, data)
        if written != len(data):
            raise OSError(errno.ENOSPC, f"short write: {written} of {len(data)}")
        self._size = len(data)
        _offload(os.fdatasync, self._fd)

    def _undo(self, exc: BaseException, start: int, ids: list[bytes]) -> None:
        self.failures += 1
        what = exc.strerror if isinstance(exc, OSError) else repr(exc)
        self.last_error = f"{self.path}: {what or exc}"
        if self.healthy:
            log.error("journal: cannot write %s (%s); refusing jobs", self.path, what)
        self.healthy = False
        try:
            os.ftruncate(self._fd, start)  # a later open must not replay them
            self._size = start
            return
        except OSError as cut:
            log.error("journal: cannot cut %s back (%s)", self.path, cut)
        if not ids:
            return  # only carried copies: replay deduplicates them
        try:
            os.write(self._fd, record(CANCEL, b" ".join(ids)))
        except OSError as cancel:
            log.error(
                "journal: cannot cancel %d jobs answered 503 in %s either (%s); "
                "they would run after a restart: move the journal aside first",
                len(ids), self.path, cancel,
            )  # fmt: skip

    def _compact(self, exclude: Collection[str] = ()) -> None:
        """Roll a full segment; let old ones go, oldest first (module docstring)."""
        if self._size >= SEGMENT_ROLL:
            self._start_segment(self._segment + 1)
        doomed, carry, keyed = [], [], False
        for number, segment in self._segments.items():
            if number == self._segment:
                break
            if segment.owed and segment.owed_bytes() * CARRY_SHARE > segment.size:
                break  # many still owed: it waits, and so do the newer ones
            doomed.append(number)
            carry.extend(segment.owed.values())
            keyed |= segment.keyed
        if not doomed:
            return
        self._carry(carry)
        if keyed:
            self._write_keys(self._current_keys(), exclude)
        for number in doomed:
            self._unlink(number)
            del self._segments[number]

    def _carry(self, entries: list[_Owed]) -> None:
        """Write `entries` into the current segment (synced), then count them there."""
        if not entries:
            return
        origins = [self._segments.get(entry.job.segment) for entry in entries]
        self._append([_Owed(e.job, e.size, e.key, e.at) for e in entries])
        # Owed here now, not there (a compaction cut short must not carry them
        # again once acknowledged), unless acknowledged during the write.
        for entry, old in zip(entries, origins, strict=True):
            if old is not None and old.owed.pop(entry.job.id, None) is None:
                self._segments[self._segment].owed.pop(entry.job.id, None)
        self.carried += len(entries)

    def _current_keys(self) -> Keys:
        if self._live_keys is None or self._opening:  # its source is not filled yet
            return self._own_keys
        return self._live_keys()

    def _write_keys(self, keys: Keys, exclude: Collection[str] = ()) -> None:
        """Replace the keys file by `keys` (but those of jobs in `exclude`)."""
        data = b"".join(record(KEY, encode_key(key, job_id, at))
                        for key, (job_id, at) in keys.items()
                        if job_id not in exclude)  # fmt: skip
        self._replace(os.path.join(self.path, KEYS_FILE), data)

    def _replace(self, path: str, data: bytes) -> None:
        """Replace `path` by `data` atomically: a temporary file, sync, rename."""
        temporary = path + ".tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            if os.write(fd, data) != len(data):
                raise OSError(errno.ENOSPC, f"short write to {temporary}")
            if self.sync == "batch":
                _offload(os.fdatasync, fd)
        finally:
            os.close(fd)
        os.rename(temporary, path)
        if self.sync == "batch":
            folder = os.open(os.path.dirname(path), os.O_RDONLY)
            try:
                _offload(os.fsync, folder)
            finally:
                os.close(folder)

    def acked(self, jobs: Iterable[Envelope]) -> None:
        """Record acknowledgements (bookkeeping only: no I/O).

        The ACK record is kept in memory and written with the next group of
        jobs (or by `flush_acks`, every heartbeat): a lost ACK record costs
        one duplicate at a replay, a write per ACKS message costs a syscall.
        """
        ids = []
        segments = self._segments
        for job in jobs:
            segment = segments.get(job.segment)
            if segment is not None and segment.owed.pop(job.id, None) is not None:
                ids.append(job.key)
        if ids:
            self._acks.append(record(ACK, b" ".join(ids)))

    def sent(self, jobs: Sequence[Envelope]) -> None:
        """Record that `jobs` went out (bookkeeping only: no I/O).

        Written with the ACK records, so a replay sends each job as its next
        attempt (``job.attempt``), not its first again. A SENT record lost in
        a crash (up to one heartbeat's) makes that job's replay say attempt 1.
        """
        if jobs:
            self._acks.append(record(SENT, encode_sent(jobs)))

    def flush_acks(self) -> None:
        """Write the ACK records kept in memory (each heartbeat, and at close).

        While a group is being written they wait: cutting that group back
        must not take them with it.
        """
        if not self._acks or self._fd < 0 or self._busy:
            return
        data, self._acks = b"".join(self._acks), []
        try:
            os.write(self._fd, data)
            self._size += len(data)
            self._segments[self._segment].size = self._size
        except OSError as exc:  # only duplicates at a replay: say so, go on
            log.error("journal: cannot write ACK records to %s (%s)", self.path, exc)

    def _unlink(self, number: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.path, f"seg-{number:08d}.log"))

    def size(self) -> int:
        """Bytes of this slot's segments and keys file on disk."""
        total = 0
        for name in os.listdir(self.path):
            try:
                total += os.path.getsize(os.path.join(self.path, name))
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


def _newer(keys: Keys, key: str, job_id: str, at: float) -> None:
    """Keep the newest mapping of `key` (a key is reused only after its window)."""
    if key not in keys or keys[key][1] <= at:
        keys[key] = (job_id, at)


def _first_bad(data: bytes, records: list[tuple[int, bytes]]) -> int:
    """Offset of the first byte not in a readable record (for the error message)."""
    offset = 0
    for kind, payload in records:
        if data[offset : offset + 9 + len(payload)] != record(kind, payload):
            return offset
        offset += 9 + len(payload)
    return offset
