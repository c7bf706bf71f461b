"""The journal's writer: one web process's slot, its records written and replayed.

A slot holds numbered segment files of records (`greenpipe.journal.segments`)
and a keys file (`greenpipe.journal.compaction`):

- JOB records carry everything needed to send the job again, with its
  idempotency key and the key's own wall time; ACK records the ids a worker
  acknowledged (appended, never synced: a lost ACK record costs one
  duplicate); CANCEL records the ids of a group whose write failed after it
  reached the file and could not be cut back.
- LATER records (a retry's wait) and a user's cancel (an ACK record) answer
  something, so they are written as a 202's JOB record is: in a group's
  write (and sync, in batch mode), `append_jobs(..., records=)`, and
  answered only once it succeeded (`greenpipe.journal.commit`).

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
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence

import gevent.lock

from greenpipe.errors import ConfigError, JournalError
from greenpipe.jobs import Envelope
from greenpipe.journal import compaction
from greenpipe.journal.owed import Owed
from greenpipe.journal.replay import Found, Keys, Reader, Replay, owed
from greenpipe.journal.segments import (
    ACK,
    LATER,
    SENT,
    encode_later,
    encode_sent,
    job_record,
    record,
)
from greenpipe.journal.slots import Identity, Slots, segment_name
from greenpipe.journal.tail import Tail

log = logging.getLogger("greenpipe.journal")

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
        identity: Identity | None = None,
        takeover: bool = False,
    ) -> None:
        if sync not in SYNC_MODES:
            raise ConfigError(f"JOURNAL_SYNC: expected none or batch, got {sync!r}")
        self.directory = os.path.abspath(directory)
        self.sync = sync
        self.corrupt = corrupt
        self._slots = Slots(self.directory)
        self.identity, self.takeover = identity, takeover  # whose journal (web.json)
        self._reader = Reader(corrupt, sync)
        self._compaction = compaction.Compaction()
        self.slot = -1
        self.path = ""  # the slot's folder
        self._live_keys = keys
        self._own_keys: Keys = {}  # the key source while opening, or without `keys`
        self._lock_fd = -1
        self._tail = Tail(sync)  # the segment being written, and the live ones
        self._acks: list[bytes] = []  # ACK records not yet written (see acked)
        self._acks_failing = False  # their last write failed (said once)
        self._opening = False
        # One writer of the tail at a time: a group commit, or an adoption's
        # carry (both may yield in a batch-mode sync; a cut-back after a failed
        # sync must not take the other's records with it).
        self._writing = gevent.lock.Semaphore()
        self.written = 0
        self.groups = 0  # group commits (writes of jobs): written / groups per write
        self.carried = 0  # owed jobs carried out of an old segment

    @property
    def healthy(self) -> bool:
        """False from a failed group write until one succeeds."""
        return self._tail.healthy

    @property
    def last_error(self) -> str:
        return self._tail.last_error

    @property
    def failures(self) -> int:
        return self._tail.failures

    @property
    def bytes_written(self) -> int:
        return self._tail.bytes_written

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
        if self.identity is not None:  # another web's journal: refused
            self._slots.claim(self.identity, self.takeover)
        self.slot, self._lock_fd = self._slots.take()
        self.path = self._slots.slot_dir(self.slot)
        os.makedirs(self.path, exist_ok=True)
        replay, own, theirs = Replay(), Found(), Found()
        self._reader.read_slot(self.path, own, replay)
        orphans = self._slots.orphans(self.slot)  # their locks held until adopted
        sources = self._slots.adopt(self.slot, [slot for slot, _ in orphans])
        for folder in sources:
            self._reader.read_slot(folder, theirs, replay)
        adopted = owed(own, theirs, replay)
        self._own_keys, self._opening = dict(replay.keys), True
        self._tail.open(self.path, own.segments)
        try:  # the adopted jobs, with their keys, here before the orphans' files go
            self._carry(adopted)
            if sources:
                self._write_keys()
            self._compact()
        except OSError as exc:
            raise JournalError(
                f"journal: cannot write {self.path} at start ({exc.strerror or exc}); "
                "free space or fix permissions there"
            ) from None
        replay.jobs.extend(entry.job for entry in adopted)
        for folder in sources:
            self._slots.remove_slot(folder)
        for other, fd in orphans:
            os.close(fd)
            replay.adopted.append(other)
        if orphans:
            slots = ", ".join(str(slot) for slot, _ in orphans)
            said = log.warning if adopted else log.info  # nothing owed: no alarm
            said("journal: adopted slots %s (%d owed)", slots, len(adopted))
        if self._live_keys is not None:
            self._own_keys = {}
        self._opening = False
        return replay

    def adopt(self) -> Replay:
        """Adopt the slots whose lock freed while this process runs, as `open` does.

        Their owed jobs are carried into this slot (synced in batch mode) and
        their files removed; the jobs and keys are returned, to be queued.
        Nothing while a group is being written (call it between groups).
        Raises OSError if the carry cannot be written: the folders, renamed
        ``adopted-...-by-<slot>``, are tried again at the next call.
        """
        replay = Replay()
        if self._tail.busy or self._tail.fd < 0 or self._writing.locked():
            return replay
        with self._writing:
            return self._adopt(replay)

    def _adopt(self, replay: Replay) -> Replay:
        orphans = self._slots.orphans(self.slot)
        left = self._slots.adoptions(self.slot)  # a carry that failed: again
        if not orphans and not any(map(self._slots.holds_jobs, left)):
            return replay  # (a folder kept only for a file moved aside: not)
        try:
            sources = self._slots.adopt(self.slot, [slot for slot, _ in orphans])
            theirs = Found()
            for folder in sources:
                self._reader.read_slot(folder, theirs, replay)
            mine = {i for segment in self._tail.segments.values() for i in segment.owed}
            adopted = [e for e in owed(Found(), theirs, replay) if e.job.id not in mine]
            self._carry(adopted)
            live = self._live_keys() if self._live_keys is not None else {}
            compaction.write_keys(self.path, {**self._own_keys, **replay.keys,
                                  **live}, (), self.sync == "batch")  # fmt: skip
        finally:
            for _, fd in orphans:
                os.close(fd)
        for folder in sources:
            self._slots.remove_slot(folder)
        if self._live_keys is None:
            self._own_keys.update(replay.keys)
        replay.jobs = [entry.job for entry in adopted]
        replay.adopted = [slot for slot, _ in orphans]
        return replay

    # -- writing --------------------------------------------------------------

    def append_jobs(
        self,
        jobs: Sequence[Envelope],
        keys: Sequence[tuple[str, float]] | None = None,
        records: Sequence[bytes] = (),
    ) -> None:
        """Write `jobs` in one go (and fdatasync in batch mode) before their 202s.

        `keys` gives each job's idempotency key and the key's wall time
        (("", 0.0) for none); a key is any str. `records` (`later_record`,
        `cancel_record`) ride in the same write, answered with the jobs.
        Compaction due (a roll, a carry, the keys file) runs first. Raises
        JournalError (the jobs must be refused, the records not answered) if a
        write or a sync failed. On any exception, a gevent.Timeout too, nothing
        of the group is left that a later open would replay.
        """
        if not jobs and not records:
            return
        entries = []
        for i, job in enumerate(jobs):
            key, at = keys[i] if keys else ("", 0.0)
            entries.append(Owed(job, 0, key, at))
        try:
            with self._writing:
                self._compact(jobs)
                self._append(entries, records=records)
        except OSError as exc:
            what = f"{len(jobs)} jobs" if jobs else f"{len(records)} records"
            raise JournalError(
                f"cannot journal {what} to {self.path} "
                f"({exc.strerror or exc}); free space or fix permissions there"
            ) from None
        if not jobs:
            return
        self.written += len(jobs)
        self.groups += 1
        if self._live_keys is None:
            for entry in entries:
                if entry.key:
                    self._own_keys[entry.key] = (entry.job.id, entry.at)

    def _append(
        self, entries: list[Owed], carried: bool = False, records: Sequence[bytes] = ()
    ) -> None:
        """Write the JOB records of `entries` (ACK records in memory ride along),
        then `records`.

        `carried`: copies of jobs still owed elsewhere; if they cannot be
        written (nor cut back) no CANCEL may name them: the originals stand.
        """
        extra, records = records, []
        for entry in entries:
            data = job_record(entry.job, entry.key, entry.at)
            if entry.job.not_before or entry.job.retries:  # it waits: and until when
                data += record(LATER, encode_later((entry.job,)))
            entry.size = len(data)
            records.append(data)
        acks, self._acks = self._acks, []
        try:
            ids = [] if carried else [e.job.key for e in entries]
            self._tail.write(b"".join([*acks, *records, *extra]), ids)
        except BaseException:
            self._acks[:0] = acks
            raise
        number = self._tail.number
        segment = self._tail.segments[number]
        for entry in entries:
            entry.job.segment = number
            segment.owed[entry.job.id] = entry
            segment.keyed |= bool(entry.key)

    def _compact(self, incoming: Sequence[Envelope] = ()) -> None:
        """Roll a full segment; let old ones go, oldest first (see compaction)."""
        tail, now = self._tail, time.time()
        segments = tail.segments
        if self._compaction.rolls(tail.number, tail.size, segments, now):
            tail.start(tail.number + 1)
        plan = self._compaction.plan(segments, tail.number, now)
        self._carry(plan.carry)
        if not plan.doomed:
            return
        if plan.keyed:
            self._write_keys({job.id for job in incoming})
        for number in plan.doomed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.path, segment_name(number)))
            del segments[number]

    def _carry(self, entries: list[Owed]) -> None:
        """Write `entries` into the current segment (synced), then count them there."""
        if not entries:
            return
        segments = self._tail.segments
        origins = [segments.get(entry.job.segment) for entry in entries]
        self._append([Owed(e.job, e.size, e.key, e.at) for e in entries], carried=True)
        compaction.moved(entries, origins, segments[self._tail.number])
        self.carried += len(entries)

    def _write_keys(self, exclude: set[str] | None = None) -> None:
        """Rewrite the keys file: the keys in their window, but those of `exclude`."""
        if self._live_keys is None or self._opening:  # its source is not filled yet
            keys = self._own_keys
        else:
            keys = self._live_keys()
        compaction.write_keys(self.path, keys, exclude or (), self.sync == "batch")

    def acked(self, jobs: Iterable[Envelope]) -> bool:
        """Record acknowledgements (bookkeeping only: no I/O); True if any was owed.

        The ACK record is kept in memory and written with the next group of
        jobs (or by `flush_acks`, every heartbeat): a lost ACK record costs
        one duplicate at a replay, a write per ACKS message costs a syscall.
        """
        ids = []
        segments = self._tail.segments
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

    def later_record(self, jobs: Sequence[Envelope]) -> bytes:
        """The LATER record saying `jobs` wait until their ``not_before`` (a
        retry's backoff), for `append_jobs`: the retry is held once it is
        written, so a crash never runs a job early that a status said waits."""
        return record(LATER, encode_later(jobs))

    def cancel_record(self, jobs: Iterable[Envelope]) -> bytes:
        """The ACK record settling the owed of `jobs` a user cancelled (b"" if none
        is owed), for `append_jobs`; once written, `forget` them.

        An ACK record, not a CANCEL: those jobs were answered 202, so their
        idempotency keys still name them (a CANCEL says "never a job").
        """
        segments = self._tail.segments
        ids = [job.key for job in jobs
               if job.id in getattr(segments.get(job.segment), "owed", ())]  # fmt: skip
        return record(ACK, b" ".join(ids)) if ids else b""

    def forget(self, jobs: Iterable[Envelope]) -> None:
        """`jobs` are no longer owed: their ACK record is written (no I/O here)."""
        segments = self._tail.segments
        for job in jobs:
            segment = segments.get(job.segment)
            if segment is not None:
                segment.owed.pop(job.id, None)

    def flush_acks(self) -> None:
        """Write the ACK records kept in memory (each heartbeat, and at close).

        While a group is being written they wait: cutting that group back
        must not take them with it.
        """
        if not self._acks or self._tail.fd < 0 or self._tail.busy:
            return
        data, self._acks = b"".join(self._acks), []
        try:
            whole = self._tail.append(data)
        except OSError as exc:  # kept, and tried again (a lost ACK: a duplicate)
            if not self._acks_failing:  # once, not every heartbeat
                log.error("journal: cannot write ACK records to %s (%s); kept, "
                          "trying again", self.path, exc)  # fmt: skip
            self._acks_failing = True
            self._acks.insert(0, data)
            return
        self._acks_failing = False
        if not whole:  # a short write, cut off (or a torn tail): written again
            self._acks.insert(0, data)

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
        self._tail.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
        self._lock_fd = -1
