"""The web's journal: every job written before its 202, replayed after a crash.

A journal is a directory of numbered slots, one per web process; each process
holds an exclusive ``flock`` on its slot's lock file (the kernel drops it on
``kill -9``), so no two processes ever write one journal, and a process that
starts finds an orphaned slot and adopts it. A slot holds numbered segment
files of records (`greenpipe.journal.segments`) and a keys file:

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
  Jobs waiting for their time (a delayed push, a retry's backoff) do not
  count in that quarter: they are carried whatever their number, so a job
  due in a week never pins the segments written meanwhile. To keep carrying
  them cheap, a segment rolls at no less than CARRY_SHARE times their bytes
  (recomputed every SEGMENT_ROLL bytes): they are rewritten at most once per
  roll, a quarter of what was written. A group carries at most a quarter of
  SEGMENT_ROLL: the rest goes with the next groups (a carry of 50,000 jobs
  would stall one group past its COMMIT_TIMEOUT on a slow disk, and the
  next, and so on); the old segment goes once all it owed is carried.
- LATER records (a retry's wait) and a user's cancel are written at once,
  or, while a group is being written, as soon as its write ends; a record
  that could not be written is kept and written again.
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
import logging
import os
import time
from collections.abc import Callable, Collection, Iterable, Sequence

from greenpipe.errors import ConfigError
from greenpipe.jobs import Envelope
from greenpipe.journal.segments import (
    ACK,
    CANCEL,
    JOB,
    KEY,
    LATER,
    SENT,
    encode_job,
    encode_key,
    encode_later,
    encode_sent,
    record,
)
from greenpipe.journal.slots import (
    KEYS_FILE,
    MAX_SLOTS,
    Found,
    JournalError,
    Keys,
    Owed,
    Replay,
    Segment,
    Slots,
    replace_file,
)
from greenpipe.journal.slots import (
    offload as _offload,
)

__all__ = ["Journal", "JournalError", "Replay", "encode_job", "record", "JOB"]
log = logging.getLogger(__name__)

SEGMENT_ROLL = 4 << 20  # bytes: past this, the next group goes to a new segment
CARRY_SHARE = 4  # an old segment's owed jobs are carried at 1/CARRY_SHARE its size
SYNC_MODES = ("none", "batch")


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
        self._slots = Slots(self.directory, corrupt, sync)
        self.slot = -1
        self.path = ""  # the slot's folder
        self._live_keys = keys
        self._own_keys: Keys = {}  # the key source while opening, or without `keys`
        self._lock_fd = -1
        self._fd = -1
        self._segment = 0  # number of the segment being written
        self._roll_floor = 0  # CARRY_SHARE x the waiting jobs' bytes: no roll below
        self._checked_at = 0  # the size at which that was last computed
        self._size = 0  # its size in bytes (the last good record's end)
        self._segments: dict[int, Segment] = {}  # live, oldest first
        self._acks: list[bytes] = []  # ACK records not yet written (see acked)
        self._busy = False  # a write and its sync under way: ACK records wait
        self._urgent = False  # a LATER or a cancel waits for that write's end
        self._acks_failing = False  # their last write failed (said once)
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
        self.slot, self._lock_fd = self._slots.take()
        self.path = self._slots.slot_dir(self.slot)
        os.makedirs(self.path, exist_ok=True)
        replay, own = Replay(), Found()
        self._slots.read_slot(self.path, own, replay)
        orphans: list[tuple[int, int]] = []  # (slot, its lock fd): held until adopted
        for other in range(MAX_SLOTS):
            if other == self.slot:
                continue
            slots = self._slots
            if not slots.holds_jobs(slots.slot_dir(other)) and not slots.adoptions(
                other
            ):
                continue
            fd = self._slots.lock(other)
            if fd >= 0:  # no live process holds it: an orphan
                orphans.append((other, fd))
        # What is adopted is first renamed "adopted-...-by-<this slot>" (synced):
        # a crash before its folder is gone leaves it to whoever holds this slot
        # next, who reads it beside the copies already carried here (replay
        # deduplicates by id); no process can take it as a slot of its own.
        theirs, sources = Found(), self._slots.adoptions(self.slot)
        for other, _ in orphans:
            sources += self._slots.adoptions(other)
            if self._slots.holds_jobs(self._slots.slot_dir(other)):
                sources.append(self._slots.slot_dir(other))
        sources = [self._slots.mark_adopted(folder, self.slot) for folder in sources]
        for folder in sources:
            self._slots.read_slot(folder, theirs, replay)
        settled = own.settled | theirs.settled
        for cancelled in own.cancelled | theirs.cancelled:  # answered 503: no key
            for key, (job_id, _) in list(replay.keys.items()):
                if job_id == cancelled:
                    del replay.keys[key]
        for found in (own, theirs):  # a job sent before the crash: its next attempt
            for job_id, (job, *_) in found.jobs.items():
                job.attempt += found.sent.get(job_id, 0)
                waits = found.later.get(job_id)
                if waits is not None:  # and a job that waited waits on
                    job.not_before, job.retries = waits[0], waits[1]
                    job.attempt = max(job.attempt, waits[2])
        self._segments = own.segments
        for job_id, (job, number, key, at, size) in own.jobs.items():
            if job_id not in settled:
                job.segment = number
                self._segments[number].owed[job_id] = Owed(job, size, key, at)
                replay.jobs.append(job)
        self._own_keys, self._opening = dict(replay.keys), True
        self._start_segment(max(own.segments, default=0) + 1)
        adopted = [
            Owed(job, size, key, at)
            for job_id, (job, _, key, at, size) in theirs.jobs.items()
            if job_id not in settled and job_id not in own.jobs
        ]
        try:  # the adopted jobs, with their keys, here before the orphans' files go
            self._carry(adopted)
            if sources:
                self._write_keys(self._own_keys)
            self._compact()
        except OSError as exc:
            raise JournalError(
                f"journal: cannot write {self.path} at start ({exc.strerror or exc}); "
                "free space or fix permissions there"
            ) from None
        replay.jobs.extend(entry.job for entry in adopted)
        for folder in sources:
            self._slots.remove_slot(folder)
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        for other, fd in orphans:
            os.close(fd)
            replay.adopted.append(other)
        if orphans:
            slots = ", ".join(str(slot) for slot, _ in orphans)
            log.warning("journal: adopted slots %s (%d owed)", slots, len(adopted))
        if self._live_keys is not None:
            self._own_keys = {}
        self._opening = False
        return replay

    # -- writing --------------------------------------------------------------

    def _start_segment(self, number: int) -> None:
        path = os.path.join(self.path, f"seg-{number:08d}.log")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._segment, self._size = fd, number, os.fstat(fd).st_size
        self._checked_at = 0
        self._segments.setdefault(number, Segment(self._size))

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
            entries.append(Owed(job, 0, key, at))
        try:
            self._compact(jobs)
            self._append(entries)
        except OSError as exc:
            raise JournalError(
                f"cannot journal {len(jobs)} jobs to {self.path} "
                f"({exc.strerror or exc}); free space or fix permissions there"
            ) from None
        finally:
            if self._urgent:  # a LATER or a cancel came during the write
                self._urgent = False
                self.flush_acks()
        self.written += len(jobs)
        self.groups += 1
        if self._live_keys is None:
            for entry in entries:
                if entry.key:
                    self._own_keys[entry.key] = (entry.job.id, entry.at)

    def _append(self, entries: list[Owed], carried: bool = False) -> None:
        """Write the JOB records of `entries` (ACK records in memory ride along).

        `carried`: copies of jobs still owed elsewhere; if they cannot be
        written (nor cut back) no CANCEL may name them: the originals stand.
        """
        records = []
        for entry in entries:
            data = record(JOB, encode_job(entry.job, entry.key, entry.at))
            if entry.job.not_before or entry.job.retries:  # it waits: and until when
                data += record(LATER, encode_later((entry.job,)))
            entry.size = len(data)
            records.append(data)
        acks, self._acks = self._acks, []
        try:
            ids = [] if carried else [e.job.key for e in entries]
            self._write(b"".join(acks + records), ids)
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
        # Whatever stays of the group ends the segment (a torn tail, or records
        # the CANCEL below settles): the next records go to a new one, so no
        # later cut back can take the CANCEL away, nor follow a torn record.
        try:
            self._start_segment(self._segment + 1)
        except OSError as roll:
            log.error("journal: cannot start a new segment in %s (%s)", self.path, roll)
            return
        if not ids:
            return  # only carried copies: replay deduplicates them
        cancel = record(CANCEL, b" ".join(ids))
        try:
            if os.write(self._fd, cancel) == len(cancel):
                self._size += len(cancel)
                self._segments[self._segment].size = self._size
                return
            raise OSError(errno.ENOSPC, "short write")
        except OSError as cancel:
            log.error(
                "journal: cannot cancel %d jobs answered 503 in %s either (%s); "
                "they would run after a restart: move the journal aside first",
                len(ids), self.path, cancel,
            )  # fmt: skip

    def _compact(self, incoming: Sequence[Envelope] = ()) -> None:
        """Roll a full segment; let old ones go, oldest first (module docstring)."""
        now = time.time()
        roll = max(SEGMENT_ROLL, self._roll_floor)
        if self._size >= min(roll, self._checked_at + SEGMENT_ROLL):
            self._checked_at = self._size  # again every SEGMENT_ROLL bytes
            self._roll_floor = CARRY_SHARE * self._waiting_bytes(now)
            if self._size >= max(SEGMENT_ROLL, self._roll_floor):
                self._start_segment(self._segment + 1)
        doomed, carry, keyed = [], [], False
        budget = SEGMENT_ROLL // CARRY_SHARE  # bytes carried per group, about
        for number, segment in self._segments.items():
            if number == self._segment:
                break
            if segment.owed and segment.due_bytes(now) * CARRY_SHARE > segment.size:
                break  # many due still owed: it waits, and so do the newer ones
            for entry in segment.owed.values():
                if carry and budget < entry.size:
                    break  # the rest goes with the next groups
                carry.append(entry)
                budget -= entry.size
            else:
                doomed.append(number)
                keyed |= segment.keyed
                continue
            break
        self._carry(carry)
        if not doomed:
            return
        if keyed:
            self._write_keys(self._current_keys(), {job.id for job in incoming})
        for number in doomed:
            self._unlink(number)
            del self._segments[number]

    def _waiting_bytes(self, now: float) -> int:
        """Bytes of the owed jobs still waiting for their time (delayed, retrying)."""
        return sum(entry.size for segment in self._segments.values()
                   for entry in segment.owed.values()
                   if entry.job.not_before > now)  # fmt: skip

    def _carry(self, entries: list[Owed]) -> None:
        """Write `entries` into the current segment (synced), then count them there."""
        if not entries:
            return
        origins = [self._segments.get(entry.job.segment) for entry in entries]
        self._append([Owed(e.job, e.size, e.key, e.at) for e in entries], carried=True)
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
        replace_file(os.path.join(self.path, KEYS_FILE), data, self.sync == "batch")

    def acked(self, jobs: Iterable[Envelope]) -> bool:
        """Record acknowledgements (bookkeeping only: no I/O); True if any was owed.

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
        return bool(ids)

    def sent(self, jobs: Sequence[Envelope]) -> None:
        """Record that `jobs` went out (bookkeeping only: no I/O).

        Written with the ACK records, so a replay sends each job as its next
        attempt (``job.attempt``), not its first again. A SENT record lost in
        a crash (up to one heartbeat's) makes that job's replay say attempt 1.
        """
        if jobs:
            self._acks.append(record(SENT, encode_sent(jobs)))

    def later(self, jobs: Sequence[Envelope]) -> None:
        """Record that `jobs` wait until their ``not_before`` (a retry's backoff).

        Written now (not with the next heartbeat's ACK records), or if a
        group is being written, as soon as its write ends: a crash must not
        run a waiting job early. Not synced: after a power loss the job may
        run early once.
        """
        if jobs:
            self._acks.append(record(LATER, encode_later(jobs)))
            self._write_soon()

    def cancelled(self, jobs: Iterable[Envelope]) -> None:
        """Settle jobs a user cancelled, written now (see `later`).

        An ACK record, not a CANCEL: those jobs were answered 202, so their
        idempotency keys still name them (a CANCEL says "never a job").
        """
        if self.acked(jobs):
            self._write_soon()

    def _write_soon(self) -> None:
        """Write the records kept in memory now, or when the group's write ends."""
        self._urgent = self._busy
        self.flush_acks()

    def flush_acks(self) -> None:
        """Write the ACK records kept in memory (each heartbeat, and at close).

        While a group is being written they wait: cutting that group back
        must not take them with it.
        """
        if not self._acks or self._fd < 0 or self._busy:
            return
        data, self._acks = b"".join(self._acks), []
        try:
            written = os.write(self._fd, data)
        except OSError as exc:  # kept, and tried again: a LATER record must not go
            if not self._acks_failing:  # once, not every heartbeat
                log.error("journal: cannot write ACK records to %s (%s); kept, "
                          "trying again", self.path, exc)  # fmt: skip
            self._acks_failing = True
            self._acks.insert(0, data)
            return
        self._acks_failing = False
        if written == len(data):
            self._size += len(data)
            self._segments[self._segment].size = self._size
            return
        # A short write (a full disk) left a torn record: cut it off, or else
        # leave it as the segment's torn tail; the records are written again.
        log.error("journal: short write of ACK records to %s", self.path)
        self._acks.insert(0, data)
        try:
            os.ftruncate(self._fd, self._size)
        except OSError:
            with contextlib.suppress(OSError):
                self._start_segment(self._segment + 1)

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
