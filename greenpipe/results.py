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

Every call into SQLite runs in gevent's thread pool, one at a time under a
real thread lock (a greenlet killed while it waits leaves its call running in
the pool; the lock, not the greenlet, keeps the connection to one thread): a
slow disk stalls the caller, never the web.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import Event
from gevent.lock import Semaphore
from gevent.monkey import get_original

from greenpipe.errors import ConfigError
from greenpipe.finished import MAX_KEPT_RESULT, FinishedJobs, Record, report
from greenpipe.jobs import Envelope, Status
from greenpipe.journal.files import offload
from greenpipe.throttle import Throttle

if TYPE_CHECKING:
    from greenpipe.journal import Journal

log = logging.getLogger(__name__)

FILE_NAME = "results.sqlite3"  # in JOURNAL_DIR, when RESULT_STORE is "journal"
PRUNE_SHARE = 10  # over the size bound: the oldest tenth of the rows goes

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    id TEXT PRIMARY KEY,
    name BLOB NOT NULL,
    status TEXT NOT NULL,
    worker TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    retries INTEGER NOT NULL,
    finished_at REAL NOT NULL,
    payload BLOB NOT NULL,
    size INTEGER NOT NULL,
    provisional INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS results_by_time ON results (finished_at);
"""

INSERT = "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0)"
# A cancel's record, written before its journal record: a final one wins.
INSERT_PROVISIONAL = (
    "INSERT OR IGNORE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1)"
)
SELECT = (
    "SELECT status, worker, attempt, payload, finished_at, retries, name, size "
    "FROM results WHERE id = ? AND finished_at >= ?"
)


def store_path(setting: str, journal_dir: str) -> str:
    """The file RESULT_STORE names: "" for none (off, or "journal" without one)."""
    if setting == "off" or (setting == "journal" and journal_dir == "off"):
        return ""
    if setting == "journal":
        return os.path.join(journal_dir, FILE_NAME)
    return setting


def _row(job_id: str, record: Record) -> tuple:
    """A record as the table's row: a result over 64 KiB is not kept (its size
    is), an error or a reason is cut to 64 KiB."""
    status, worker, attempt, payload, finished, retries, name = record
    size = len(payload)
    if size > MAX_KEPT_RESULT:
        payload = b"" if status is Status.DONE else payload[:MAX_KEPT_RESULT]
    return (job_id, name, status.value, worker, attempt, retries, finished,
            payload, size)  # fmt: skip


class ResultStore:
    """Finished jobs' records in an SQLite file (WAL), for `ttl` s, within `size`
    bytes. `open` first; `write` and `get` from greenlets (each waits for its
    turn and for the thread pool)."""

    def __init__(self, path: str, ttl: float, size: int) -> None:
        self.path = path
        self.ttl = ttl
        self.size = size
        self.written = 0  # records written by this process (its /stats)
        self.failures = 0  # writes that failed (records lost, jobs not)
        self._db: sqlite3.Connection | None = None
        self._turn = get_original("_thread", "allocate_lock")()  # see module
        self._throttle = Throttle(log, 60.0)

    def open(self) -> None:
        """Open (or make) the file; ConfigError naming it and why if it cannot.

        A file that is not an SQLite database (damaged) is moved aside, named
        in an error log line, and a new one made: it held records, not jobs.
        """
        try:
            folder = os.path.dirname(self.path)
            if folder:
                os.makedirs(folder, exist_ok=True)
            try:
                db = _connect(self.path)
            except sqlite3.DatabaseError as exc:
                if isinstance(exc, sqlite3.OperationalError):
                    raise  # locked, read-only, a directory: not damage
                aside = f"{self.path}.damaged-{int(time.time())}"
                os.replace(self.path, aside)
                log.error("result store %s is not an SQLite database (%s): moved "
                          "to %s, and a new one made; the records it held are "
                          "not answered", self.path, exc, aside)  # fmt: skip
                db = _connect(self.path)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(
                f"RESULT_STORE: cannot open {self.path!r} as an SQLite file of "
                f"finished jobs ({exc}); give a writable file path, or "
                "RESULT_STORE=off to keep finished jobs in memory only (lost at "
                "a restart)"
            ) from exc
        self._db = db

    def close(self) -> None:
        """Close the file; what was written stays (a later call writes nothing)."""
        if self._db is not None:
            offload(self._locked, self._shut)

    def _shut(self, db: sqlite3.Connection) -> None:
        db.close()
        self._db = None

    def write(
        self,
        records: Iterable[tuple[str, Record]],
        now: float,
        provisional: bool = False,
    ) -> None:
        """Keep `records` (job id, `FinishedJobs` record with a wall-clock time),
        then forget those past `ttl` and the oldest beyond `size`.

        `provisional`: written only where the job has no record, replaced by
        any later one, taken back by `withdraw` (a cancel's, see `Keeper`).
        A failure is logged (throttled) and counted; the records are lost, not
        the jobs.
        """
        rows = [_row(job_id, record) for job_id, record in records]
        if not rows or self._db is None:
            return
        insert = INSERT_PROVISIONAL if provisional else INSERT
        try:
            offload(self._locked, self._write, insert, rows, now - self.ttl)
        except sqlite3.Error as exc:
            self.failures += 1
            self._throttle.error("write", "result store %s: cannot write %d "
                                 "records (%s); lookups of those jobs will 404 "
                                 "after a restart", self.path, len(rows),
                                 exc)  # fmt: skip
            return
        self.written += len(rows)

    def _locked(self, call: Any, *args: Any) -> Any:
        """`call(*args)` with the connection to itself (in a pool thread)."""
        with self._turn:
            if self._db is None:
                raise sqlite3.ProgrammingError("the result store is closed")
            return call(self._db, *args)

    def _write(
        self, db: sqlite3.Connection, insert: str, rows: list[tuple], horizon: float
    ) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(insert, rows)
            db.execute("DELETE FROM results WHERE finished_at < ?", (horizon,))
            self._bound(db)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def withdraw(self, job_id: str) -> None:
        """Forget `job_id`'s record if it is still provisional."""
        if self._db is None:
            return
        try:
            offload(self._locked, _withdraw, job_id)
        except sqlite3.Error as exc:
            self._throttle.error("write", "result store %s: cannot withdraw a "
                                 "record (%s)", self.path, exc)  # fmt: skip

    def _bound(self, db: sqlite3.Connection) -> None:
        """Delete the oldest rows while the pages in use exceed `size`."""
        page = db.execute("PRAGMA page_size").fetchone()[0]
        while True:
            pages = db.execute("PRAGMA page_count").fetchone()[0]
            free = db.execute("PRAGMA freelist_count").fetchone()[0]
            if (pages - free) * page <= self.size:
                return
            rows = db.execute("SELECT count(*) FROM results").fetchone()[0]
            if rows == 0:
                return
            db.execute(
                "DELETE FROM results WHERE rowid IN "
                "(SELECT rowid FROM results ORDER BY rowid LIMIT ?)",
                (max(1, rows // PRUNE_SHARE),),
            )

    def get(self, job_id: str, now: float | None = None) -> dict[str, Any] | None:
        """The job's record as /jobs/<id> shows it, or None (unknown or expired)."""
        if self._db is None:
            return None
        now = time.time() if now is None else now
        try:
            found = offload(self._locked, _read, job_id, now - self.ttl)
        except sqlite3.Error as exc:
            self._throttle.error("read", "result store %s: cannot read (%s)",
                                 self.path, exc)  # fmt: skip
            return None
        if found is None:
            return None
        status, worker, attempt, payload, finished, retries, name, size = found
        answer = report(job_id, Status(status), worker, attempt, payload, finished,
                        retries, name)  # fmt: skip
        if status == Status.DONE and size > len(payload):  # over MAX_KEPT_RESULT
            answer["result_not_kept"] = f"{size} bytes; over 64 KiB"
        return answer

    def count(self) -> int:
        """Records in the file now, every process's (tests, /stats)."""
        if self._db is None:
            return 0
        return int(offload(self._locked, _count))


def _connect(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=5.0, isolation_level=None,
                         check_same_thread=False)  # fmt: skip
    try:
        # WAL: readers in other processes never wait for a writer, and a
        # commit is an append (synced at checkpoints, not per commit).
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(SCHEMA)
    except sqlite3.Error:
        db.close()
        raise
    return db


def _withdraw(db: sqlite3.Connection, job_id: str) -> None:
    db.execute("DELETE FROM results WHERE id = ? AND provisional = 1", (job_id,))


def _read(db: sqlite3.Connection, job_id: str, horizon: float) -> tuple | None:
    return db.execute(SELECT, (job_id, horizon)).fetchone()  # type: ignore[no-any-return]


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

    def acked(self, jobs: Iterable[Envelope]) -> None:
        """`jobs` finished (their records added to `finished` already)."""
        self._acks.extend(jobs)
        self._due.set()

    def cancelling(self, job: Envelope, running: bool) -> None:
        """Before a cancel's journal record: its record, provisional. Once the
        journal stops owing the job, a crash must find it here; the worker's
        own answer (or the cancel's) replaces it."""
        reason = (
            b"cancelled while it ran (what its worker answered was not heard "
            b"before the web restarted)" if running else b"cancelled"
        )  # fmt: skip
        record = (Status.CANCELLED, "", job.attempt, reason, time.time(),
                  max(job.retries, 0), job.name or job.path)  # fmt: skip
        with self._turn:  # after any write under way: a final record wins
            self.store.write([(job.id, record)], time.time(), provisional=True)

    def withdraw(self, job: Envelope) -> None:
        """The cancel could not be journaled: its provisional record goes."""
        with self._turn:
            self.store.withdraw(job.id)

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        while True:
            self._due.wait()
            self._due.clear()
            self.keep()

    def keep(self) -> None:
        """Write every record added so far, then acknowledge its jobs."""
        with self._turn:
            while True:
                records = self.finished.take_fresh()
                acks, self._acks = self._acks, []
                if not records and not acks:
                    return
                if records:
                    self.store.write(records, time.time())
                if acks and self.journal is not None:
                    self.journal.acked(acks)

    def close(self) -> None:
        """Write what is left, stop the greenlet, close the store."""
        self.keep()  # waits for a write under way: its ACKs are then applied
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
        self.store.close()
