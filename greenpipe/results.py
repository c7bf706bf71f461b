"""Finished jobs' records that outlive a restart: an SQLite file on the web's host.

`FinishedJobs` (memory) answers a lookup first; this store answers what memory
no longer has: after a restart (SIGTERM, a rolling restart, ``kill -9``), and
from any process that opens the same file (the processes of one web share the
one beside their journal; a scheduler or a second web is pointed at it with
RESULT_STORE). Records are kept for STATUS_TTL and within RESULT_STORE_SIZE
bytes, the oldest going first.

Order with the journal: a finished job's acknowledgement reaches the journal
only once its record is written here (`Keeper`), so a job the journal no
longer owes after a crash has its record here (a process crash; a power loss
may take the last moments' records, see docs/reliability.md).

Writes run on the event loop and never wait: not for another process's write
(refused at once, tried again by the keeper), nor for a sync (checkpoints run
in gevent's thread pool, as lookups do): see `ResultStore.__init__`.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import struct
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import Event
from gevent.lock import Semaphore
from gevent.monkey import get_original

from greenpipe.errors import ConfigError
from greenpipe.finished import MAX_KEPT_RESULT, FinishedJobs, Record, report
from greenpipe.jobs import Envelope, Progress, Status
from greenpipe.journal.files import offload
from greenpipe.throttle import Throttle

if TYPE_CHECKING:
    from greenpipe.journal import Journal

log = logging.getLogger(__name__)

FILE_NAME = "results.sqlite3"  # in JOURNAL_DIR, when RESULT_STORE is "journal"
PRUNE_EVERY = 1.0  # seconds between looks for records past their time or the size
PRUNE_CHUNK = 1000  # rows a pruning transaction deletes at most (short locks)
WAL_LIMIT = 16 * 1024 * 1024  # bytes the WAL is cut back to after a checkpoint
KEEP_EVERY = 0.02  # seconds the keeper lets records gather after a write
GIVE_UP = 10.0  # seconds of failed writes before jobs are acknowledged anyway
CANCEL_TRIES = 25  # a cancel's record: tries (KEEP_EVERY apart) while others write
BUSY_TIMEOUT = 0.0  # seconds a write waits for another process's (see Keeper)
OPEN_TIMEOUT = 5.0  # seconds opening, a lookup, pruning wait for others

# One row a job: its id, when it finished and when its record expires (wall
# clock: each process's own STATUS_TTL, so processes with other settings
# sharing the file keep theirs), whether the record is a cancel's provisional
# one, and the rest packed (`_pack`). One index (the id's): measured, ten
# columns and an index on the time cost twice as much per record. Rows are in
# the order written; pruning looks at the oldest first (`_prune`).
SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    id TEXT PRIMARY KEY,
    finished_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    provisional INTEGER NOT NULL,
    record BLOB NOT NULL
);
"""

INSERT = "INSERT OR REPLACE INTO results VALUES (?, ?, ?, 0, ?)"
# A cancel's record, written before its journal record: a final one wins.
INSERT_PROVISIONAL = "INSERT OR IGNORE INTO results VALUES (?, ?, ?, 1, ?)"
SELECT = "SELECT finished_at, record FROM results WHERE id = ? AND expires_at >= ?"

# status, attempt, retries, the payload's whole size, the name's and the
# worker's lengths; then the name, the worker and the payload (as kept).
_HEAD = struct.Struct(">BIIIHH")
# Flag on the status byte: a progress report follows the head (done, total,
# 0 for none, when the web heard it, the note's length; then the note). A
# record written before progress existed has no flag, and reads as before.
HAS_PROGRESS = 0x80
_PROGRESS = struct.Struct(">dddB")
_STATUSES = tuple(Status)
_STATUS_CODE = {status: code for code, status in enumerate(_STATUSES)}


def store_path(setting: str, journal_dir: str) -> str:
    """The file RESULT_STORE names: "" for none (off, or "journal" without one)."""
    if setting == "off" or (setting == "journal" and journal_dir == "off"):
        return ""
    if setting == "journal":
        return os.path.join(journal_dir, FILE_NAME)
    return setting


def _pack(record: Record, worker: bytes) -> bytes:
    """A record's `record` column: a result over 64 KiB is not kept (its size
    is), an error or a reason is cut to 64 KiB."""
    status, _, attempt, payload, _, retries, name, progress = record
    size = len(payload)
    if size > MAX_KEPT_RESULT:
        payload = b"" if status is Status.DONE else payload[:MAX_KEPT_RESULT]
    code, reported = _STATUS_CODE[status], b""
    if progress is not None:
        code |= HAS_PROGRESS
        note = progress.note.encode()
        reported = _PROGRESS.pack(progress.done, progress.total or 0.0, progress.at,
                                  len(note)) + note  # fmt: skip
    head = _HEAD.pack(code, attempt, max(retries, 0), size, len(name), len(worker))
    return b"".join((head, reported, name, worker, payload))


def _unpack(job_id: str, finished: float, packed: bytes) -> dict[str, Any]:
    """A row as /jobs/<id> answers it."""
    code, attempt, retries, size, name_size, worker_size = _HEAD.unpack_from(packed)
    at, progress = _HEAD.size, None
    if code & HAS_PROGRESS:
        code &= ~HAS_PROGRESS
        done, total, heard, note_size = _PROGRESS.unpack_from(packed, at)
        at += _PROGRESS.size
        note = packed[at : at + note_size].decode("utf-8", "replace")
        progress = Progress(done, total or None, note, heard)
        at += note_size
    name = packed[at : at + name_size]
    worker = packed[at + name_size : at + name_size + worker_size]
    payload = packed[at + name_size + worker_size :]
    status = _STATUSES[code]
    answer = report(job_id, status, worker.decode("utf-8", "replace"), attempt,
                    payload, finished, retries, name, progress)  # fmt: skip
    if status is Status.DONE and size > len(payload):  # over MAX_KEPT_RESULT
        answer["result_not_kept"] = f"{size} bytes; over 64 KiB"
    return answer


class ResultStore:
    """Finished jobs' records in an SQLite file (WAL), for `ttl` s, within `size`
    bytes. `open` first; `write` and `get` from greenlets (each waits for its
    turn and for the thread pool)."""

    def __init__(self, path: str, ttl: float, size: int) -> None:
        self.path = path
        self.ttl = ttl
        self.size = size
        self.written = 0  # records written by this process (its /stats)
        self.failures = 0  # writes that failed (retried by the keeper)
        self.busy = 0  # writes refused: another process was writing (retried)
        # Two connections. Writes run on the event loop: through the thread
        # pool they cost twice the CPU (the GIL handed back and forth), and an
        # SQLite write that never waits (BUSY_TIMEOUT 0: another process's
        # write makes it fail, and the keeper tries again) and never syncs
        # (checkpoints run in the pool, once a second) is an append to the
        # page cache, as the journal's own writes are. Lookups run in the pool
        # on a connection of their own: in WAL mode a reader never waits for
        # a writer, and the reader holds at most one of the pool's threads
        # (the journal's syncs need them).
        self._writer: _Connection | None = None
        self._reader: _Connection | None = None
        self._maintainer: _Connection | None = None  # pruning, checkpoints
        self._throttle = Throttle(log, 60.0)

    def open(self) -> None:
        """Open (or make) the file; ConfigError naming it and why if it cannot.

        A file that is not an SQLite database (damaged) is moved aside, named
        in an error log line, and a new one made: it held records, not jobs.
        """
        try:
            folder = os.path.dirname(self.path)
            if folder and not os.path.isdir(folder):
                raise OSError(f"no directory {folder!r}")  # a typo: not made
            try:
                db = _connect(self.path, writer=True)
            except sqlite3.DatabaseError as exc:
                if isinstance(exc, sqlite3.OperationalError):
                    raise  # locked, read-only, a directory: not damage
                aside = f"{self.path}.damaged-{int(time.time())}"
                os.replace(self.path, aside)
                log.error("result store %s is not an SQLite database (%s): moved "
                          "to %s, and a new one made; the records it held are "
                          "not answered", self.path, exc, aside)  # fmt: skip
                db = _connect(self.path, writer=True)
            reader, maintainer = _connect(self.path), _connect(self.path)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(
                f"RESULT_STORE: cannot open {self.path!r} as an SQLite file of "
                f"finished jobs ({exc}); give a writable file path, or "
                "RESULT_STORE=off to keep finished jobs in memory only (lost at "
                "a restart)"
            ) from exc
        self._writer = _Connection(db, pooled=False)
        self._reader = _Connection(reader)
        self._maintainer = _Connection(maintainer)
        log.info("result store %s: finished jobs' records kept %g s, within %d "
                 "bytes (RESULT_STORE, STATUS_TTL, RESULT_STORE_SIZE)",
                 os.path.abspath(self.path), self.ttl, self.size)  # fmt: skip

    def close(self) -> None:
        """Close the file; what was written stays (a later call writes nothing)."""
        for connection in (self._writer, self._reader, self._maintainer):
            if connection is not None:
                connection.close()
        self._writer = self._reader = self._maintainer = None

    def write(
        self,
        records: Iterable[tuple[str, Record]],
        shift: float = 0.0,
        provisional: bool = False,
    ) -> bool:
        """Keep `records` (job id, `FinishedJobs` record); `shift` turns their
        times into wall-clock ones (`FinishedJobs.take_fresh`). False if they
        could not be written (logged, throttled, and counted): the caller
        keeps them, and what depends on them, for another try.

        `provisional`: written only where the job has no record, replaced by
        any later one, taken back by `withdraw` (a cancel's, see `Keeper`).
        Once a second, records past `ttl` and the oldest beyond `size` go.
        """
        workers: dict[str, bytes] = {}  # one ACKS message: one worker, mostly
        ttl = self.ttl
        rows = []
        for job_id, record in records:
            worker = workers.get(record[1])
            if worker is None:
                worker = workers[record[1]] = record[1].encode("utf-8", "replace")
            finished = record[4] + shift
            rows.append((job_id, finished, finished + ttl, _pack(record, worker)))
        if not rows:
            return True
        insert = INSERT_PROVISIONAL if provisional else INSERT
        try:
            if self._writer is None:
                raise sqlite3.ProgrammingError("the result store is closed")
            self._writer.call(self._write, insert, rows)
        except sqlite3.Error as exc:
            if _busy(exc):
                self.busy += 1  # another process writes now: the keeper tries again
            else:
                self._failed(len(rows), exc)
            return False
        self.written += len(rows)
        return True

    def _failed(self, count: int, exc: sqlite3.Error) -> None:
        self.failures += 1
        self._throttle.error("write", "result store %s: cannot write %d records "
                             "(%s); their jobs stay owed in the journal, tried "
                             "again", self.path, count, exc)  # fmt: skip

    def _write(self, db: sqlite3.Connection, insert: str, rows: list[tuple]) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(insert, rows)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def prune(self) -> None:
        """Forget records past their time, then the oldest beyond `size`, and
        copy the WAL into the file: in the pool, on a connection of its own,
        in transactions of at most PRUNE_CHUNK rows (another process's write,
        or ours on the event loop, waits milliseconds, not the whole prune)."""
        if self._maintainer is None:
            return
        try:
            while self._maintainer.call(_prune_expired, time.time()):
                pass
            while self._maintainer.call(_prune_oldest, self.size):
                pass
            self._maintainer.call(_checkpoint)
        except sqlite3.Error as exc:
            self._throttle.warning("prune", "result store %s: cannot prune (%s); "
                                   "tried again", self.path, exc)  # fmt: skip

    def withdraw(self, job_id: str) -> bool:
        """Forget `job_id`'s record if it is still provisional; False if the
        store was busy (another process writing): try again."""
        if self._writer is None:
            return True
        try:
            self._writer.call(_withdraw, job_id)
            return True
        except sqlite3.Error as exc:
            if _busy(exc):
                return False
            self._throttle.error("write", "result store %s: cannot withdraw a "
                                 "record (%s)", self.path, exc)  # fmt: skip
            return True

    def get(self, job_id: str, now: float | None = None) -> dict[str, Any] | None:
        """The job's record as /jobs/<id> shows it, or None (unknown or expired)."""
        if self._reader is None:
            return None
        now = time.time() if now is None else now
        try:
            found = self._reader.call(_read, job_id, now)
        except sqlite3.Error as exc:
            self._throttle.error("read", "result store %s: cannot read (%s)",
                                 self.path, exc)  # fmt: skip
            return None
        if found is None:
            return None
        return _unpack(job_id, found[0], found[1])

    def count(self) -> int:
        """Records in the file now, every process's (tests, /stats)."""
        if self._reader is None:
            return 0
        return int(self._reader.call(_count))


def _connect(path: str, writer: bool = False) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=OPEN_TIMEOUT, isolation_level=None,
                         check_same_thread=False)  # fmt: skip
    try:
        # WAL: readers in other processes never wait for a writer, and a
        # commit is an append (synced at checkpoints, not per commit).
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
        db.executescript(SCHEMA)
        if writer:  # on the event loop: it must never wait, nor sync
            db.execute(f"PRAGMA busy_timeout={round(BUSY_TIMEOUT * 1000)}")
            db.execute("PRAGMA wal_autocheckpoint=0")  # `checkpoint`, in the pool
    except sqlite3.Error:
        db.close()
        raise
    return db


def _checkpoint(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA wal_checkpoint(PASSIVE)")


def _withdraw(db: sqlite3.Connection, job_id: str) -> None:
    db.execute("DELETE FROM results WHERE id = ? AND provisional = 1", (job_id,))


class _Connection:
    """One SQLite connection, used one call at a time: in gevent's thread pool
    (`pooled`), or on the event loop itself.

    Pooled, greenlets queue on a gevent semaphore, so the connection holds at
    most one pool thread; a real thread lock keeps it to one thread even when
    a greenlet is killed while its call still runs in the pool.
    """

    def __init__(self, db: sqlite3.Connection, pooled: bool = True) -> None:
        self.db: sqlite3.Connection | None = db
        self.pooled = pooled
        self._queue = Semaphore()
        self._thread = get_original("_thread", "allocate_lock")()

    def call(self, function: Any, *args: Any) -> Any:
        """`function(db, *args)`; an `sqlite3.Error` raised here."""
        if self.pooled:
            with self._queue:
                value, error = offload(self._run, function, args)
        else:
            value, error = self._run(function, args)
        if error is not None:
            raise error
        return value

    def _run(self, function: Any, args: tuple) -> tuple[Any, sqlite3.Error | None]:
        # An error travels back as a value: raised in the pool, gevent would
        # print it to stderr as if unhandled (a locked store, every retry).
        with self._thread:
            if self.db is None:
                return None, sqlite3.ProgrammingError("the result store is closed")
            try:
                return function(self.db, *args), None
            except sqlite3.Error as exc:
                return None, exc

    def close(self) -> None:
        self.call(self._shut)

    def _shut(self, db: sqlite3.Connection) -> None:
        db.close()
        self.db = None


def _busy(exc: sqlite3.Error) -> bool:
    """Another connection writes now (SQLITE_BUSY, SQLITE_LOCKED): try again."""
    return isinstance(exc, sqlite3.OperationalError) and (
        "locked" in str(exc) or "busy" in str(exc)
    )


def _prune_expired(db: sqlite3.Connection, now: float) -> int:
    """Delete the expired among the oldest PRUNE_CHUNK rows; how many went.

    Rows are in the order written: the expired are at the front, except where
    a process with a longer STATUS_TTL wrote between them (kept, and looked
    at again next time; the size bound still holds).
    """
    return db.execute(
        "DELETE FROM results WHERE rowid IN (SELECT rowid FROM results "
        "ORDER BY rowid LIMIT ?) AND expires_at < ?",
        (PRUNE_CHUNK, now),
    ).rowcount


def _prune_oldest(db: sqlite3.Connection, size: int) -> int:
    """If the pages in use exceed `size`: delete the oldest tenth of the rows
    (at most PRUNE_CHUNK); how many went."""
    page = db.execute("PRAGMA page_size").fetchone()[0]
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    free = db.execute("PRAGMA freelist_count").fetchone()[0]
    if (pages - free) * page <= size:
        return 0
    low, high = db.execute("SELECT min(rowid), max(rowid) FROM results").fetchone()
    if low is None:
        return 0
    share = min(PRUNE_CHUNK, max(1, (high - low + 1) // 10))  # rowids: no count(*)
    return db.execute(
        "DELETE FROM results WHERE rowid IN "
        "(SELECT rowid FROM results ORDER BY rowid LIMIT ?)",
        (share,),
    ).rowcount


def _read(db: sqlite3.Connection, job_id: str, now: float) -> tuple | None:
    return db.execute(SELECT, (job_id, now)).fetchone()  # type: ignore[no-any-return]


def _count(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT count(*) FROM results").fetchone()[0])


class Keeper:
    """Writes finished jobs' records to the store, then acknowledges their jobs
    in the journal: never the other way round (see the module docstring).

    `Settlement` hands it the jobs to acknowledge (`acked`) instead of the
    journal; their records are in `finished`, added in the same step. Its
    greenlet writes whatever is there whenever anything is: one write per
    ACKS message when idle, bigger batches under load (what arrives during a
    write waits for the next).
    """

    def __init__(
        self, store: ResultStore, finished: FinishedJobs, journal: Journal | None
    ) -> None:
        self.store = store
        self.finished = finished
        self.journal = journal
        finished.fresh = []  # tracked from now on
        self._acks: list[Envelope] = []  # their ACKs wait for their records
        self._due = Event()
        self._turn = Semaphore()  # one write (and its ACKs) at a time, in order
        self._greenlet: gevent.Greenlet | None = None
        self._failing_since = 0.0  # when writes began to fail (0: they do not)

    def acked(self, jobs: Iterable[Envelope]) -> None:
        """`jobs` finished (their records added to `finished` already)."""
        self._acks.extend(jobs)
        self._due.set()

    def cancelling(self, job: Envelope, running: str) -> bool:
        """Before a cancel's journal record: its record, provisional (`running`:
        the worker running it, "" if queued); False if it could not be
        written (the cancel must then not be journaled). Once
        the journal stops owing the job, a crash must find it here; the
        worker's own answer (or the cancel's) replaces it."""
        reason = (
            b"cancelled while it ran (what its worker answered was not heard "
            b"before the web restarted)" if running else b"cancelled"
        )  # fmt: skip
        record = (Status.CANCELLED, running, job.attempt, reason, time.time(),
                  max(job.retries, 0), job.name or job.path, job.progress)  # fmt: skip
        for _ in range(CANCEL_TRIES):  # another process's write: a moment
            with self._turn:  # after any write under way: a final record wins
                busy = self.store.busy
                if self.store.write([(job.id, record)], provisional=True):
                    return True
            if self.store.busy == busy:  # a failure, not a busy store
                return False
            gevent.sleep(KEEP_EVERY)
        return False

    def withdraw(self, job: Envelope) -> None:
        """The cancel could not be journaled: its provisional record goes."""
        for _ in range(CANCEL_TRIES):
            with self._turn:
                if self.store.withdraw(job.id):
                    return
            gevent.sleep(KEEP_EVERY)

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        pause, checkpointed = KEEP_EVERY, time.monotonic()
        while True:
            self._due.wait()
            self._due.clear()
            try:
                kept = self.keep()
            except Exception:  # a bug must not stop the ACKs for good
                log.exception("result store: the keeper failed; trying again")
                kept = False
            if time.monotonic() - checkpointed >= PRUNE_EVERY:
                checkpointed = time.monotonic()
                self.store.prune()  # in the pool: deletes in chunks, syncs
            # What finishes meanwhile goes in the next write: a write per ACKS
            # message cost a quarter of the web's CPU under load; this costs
            # ACKs that much later (a kill -9 may replay a job finished in that
            # time). A store that cannot write (another process writing, a
            # full disk) is tried again, less often each time.
            pause = KEEP_EVERY if kept else min(1.0, pause * 2)
            if not kept:
                self._due.set()
            gevent.sleep(pause)

    def keep(self, give_up: float = GIVE_UP) -> bool:
        """Write every record added so far, then acknowledge its jobs; False if
        the store could not write them: they wait, their jobs still owed.

        After `give_up` s of failed writes, the jobs are acknowledged without
        their records (an error says so): a journal that owes every job
        finished since would grow without bound, and replay them all.
        """
        with self._turn:
            while True:
                records, shift = self.finished.take_fresh()
                acks, self._acks = self._acks, []
                if not records and not acks:
                    self._failing_since = 0.0
                    return True
                if records and not self.store.write(records, shift):
                    now = time.monotonic()
                    self._failing_since = self._failing_since or now
                    if now - self._failing_since < give_up:
                        assert self.finished.fresh is not None
                        self.finished.fresh[:0] = records  # in order, for later
                        self._acks[:0] = acks
                        return False
                    log.error("result store %s: cannot write for %.0f s; %d jobs "
                              "acknowledged without their records (a restart "
                              "answers 404 for them)", self.store.path,
                              now - self._failing_since, len(acks))  # fmt: skip
                if acks and self.journal is not None:
                    self.journal.acked(acks)

    def close(self) -> None:
        """Write what is left, stop the greenlet, close the store. What cannot
        be written stays owed in the journal: the next start replays it."""
        for _ in range(CANCEL_TRIES * 10):  # another process writing: a moment
            if self.keep(give_up=float("inf")):
                break
            gevent.sleep(KEEP_EVERY)
        if self._greenlet is not None:
            self._greenlet.kill()  # a write it began since: its jobs stay owed
        self.store.close()
