"""Group commit: the jobs submitted since the journal's last write, written in one go.

Request greenlets add their job to the open `Group` and park; the dispatcher
greenlet writes the group (one write, and with JOURNAL_SYNC=batch one
fdatasync off the loop, bounded by COMMIT_TIMEOUT) and settles it: every
parked request wakes, with an error if the write failed (a 503: never a 202
for a job not kept). A request that waited tells `greenpipe.turns`, so the
HTTP server skips its own yield. A settled group's jobs go into the shared
`Queues` (their keys into the idempotency keys) before its requests wake, and
the dispatcher greenlet's `wake` is set: nothing is called back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import gevent
from gevent.hub import Waiter

from greenpipe import turns
from greenpipe.jobs import Envelope
from greenpipe.journal.log import Journal, JournalError
from greenpipe.queues import Queues

if TYPE_CHECKING:
    from gevent.event import Event

    from greenpipe.admission import IdempotencyKeys

COMMIT_TIMEOUT = 5.0  # seconds a request waits for its group's journal write
_NO_KEY = ("", 0.0)


class Group:
    """Jobs submitted since the journal's last write: their 202s wait for it.

    Each waiting request parks on a bare `gevent.hub.Waiter`, and one hub
    callback wakes them all: a `gevent.event.Event` per group measured several
    per cent of the web's CPU (its thread-safe link machinery, per waiter).
    """

    __slots__ = ("waiters", "settled", "error")

    def __init__(self) -> None:
        self.waiters: list[Waiter] = []
        self.settled = False
        self.error = ""

    def wait(self) -> None:
        """Park until the group is settled (the dispatcher always settles it)."""
        if not self.settled:
            waiter = Waiter()
            self.waiters.append(waiter)
            waiter.get()
            turns.waited()

    def settle(self, error: str = "") -> None:
        self.settled, self.error = True, error
        if self.waiters:
            gevent.get_hub().loop.run_callback(self._wake_all)

    def _wake_all(self) -> None:  # in the hub: where a Waiter is switched from
        for waiter in self.waiters:
            waiter.switch(None)


# Called once a noted record's group is settled: (the error, or "").
Noted = Callable[[str], None]
_Notes = tuple[list[bytes], list[Noted]]  # records noted, and their callbacks


class GroupCommit:
    """The open group and its write: one group at a time, in order.

    A group written puts its jobs in `queues` and their keys in `keys`, then
    sets `wake`; a group that failed (its requests get 503s) does neither.
    """

    def __init__(
        self, journal: Journal, queues: Queues, keys: IdempotencyKeys, wake: Event
    ) -> None:
        self.journal = journal
        self.queues = queues
        self.keys = keys
        self._wake = wake
        # Keys whose job waits for its group commit: a repeat waits for it too.
        self.pending: dict[str, tuple[Envelope, Group]] = {}
        self._jobs: list[Envelope] = []
        # (idempotency key, wall time it was taken); ("", 0.0) for a job without
        self._keys: list[tuple[str, float]] = []
        self._records: list[bytes] = []  # noted: written with the open group
        self._noted: list[Noted] = []
        self.group = Group()
        self.committing = False  # a group's write and sync are under way
        self._writing = 0  # jobs of the group being written
        self._writer: gevent.Greenlet | None = None

    def add(self, job: Envelope, key: str) -> Group:
        """Put `job` in the open group; the caller waits on the group returned."""
        self._jobs.append(job)
        self._keys.append((key, time.time()) if key else _NO_KEY)
        if key:
            self.pending[key] = (job, self.group)
        return self.group

    def note(self, data: bytes, done: Noted | None = None) -> Group:
        """Put a record in the open group; `done(error)` once it is settled.

        For what is answered only once written as a 202 is: the caller waits
        on the group returned (a cancel), or acts in `done` (a retry's hold,
        called before the group's waiters wake).
        """
        self._records.append(data)
        if done is not None:
            self._noted.append(done)
        return self.group

    def __bool__(self) -> bool:
        """True while jobs or records wait for a write."""
        return bool(self._jobs or self._records)

    def __len__(self) -> int:
        """Jobs submitted and not yet settled: the open group and the one written."""
        return len(self._jobs) + self._writing

    def close(self, timeout: float = COMMIT_TIMEOUT) -> None:
        """Stop: the group being written finishes (its jobs are settled as it
        says); the open group gets 503s (the web is stopping), none is left
        parked. Then the journal can be closed under nobody.

        An open group holding records (a cancel, a retry's hold) is written
        instead, its jobs with it (202s: owed, the next start sends them): a
        clean stop must not run a retry early, nor undo a cancel."""
        writer = self._writer
        if writer is not None:
            writer.join(timeout)
        deadline = time.monotonic() + timeout
        # Records noted while that write syncs (a retry read meanwhile) form the
        # next group: written here too, none by a writer of commit()'s own
        # (committing), which would outlive the journal's close.
        while self._records and not self.committing and time.monotonic() < deadline:
            self.committing = True  # reset by _write
            self._write(*self._take())
        if not (self._jobs or self._records):
            return
        jobs, keys, group, (records, noted) = self._take()
        self._writing = 0
        if jobs or records:
            error = "this web process is stopping; retry on another"
            self._journaled(jobs, keys, error)
            for done in noted:
                done(error)
            group.settle(error)

    def _journaled(
        self, jobs: list[Envelope], keys: list[tuple[str, float]], error: str
    ) -> None:
        """A group ended: queue its jobs and remember their keys, or not."""
        for job, (key, at) in zip(jobs, keys, strict=True):
            if key and self.pending.get(key, (None, None))[0] is job:
                del self.pending[key]
                if not error:
                    self.keys.remember(key, job.id, at)  # the time journaled
        if not error:
            self.queues.add(jobs)
        self._wake.set()  # send these, write the next group, see if drained

    def _take(
        self,
    ) -> tuple[list[Envelope], list[tuple[str, float]], Group, _Notes]:
        """The open group, to write: a new one opens."""
        taken = self._jobs, self._keys, self.group, (self._records, self._noted)
        self._jobs, self._keys, self.group = [], [], Group()
        self._records, self._noted = [], []
        self._writing = len(taken[0])
        return taken

    def commit(self) -> None:
        """Write the open group (in a greenlet of its own with JOURNAL_SYNC=batch).

        The dispatcher goes on sending what is already journaled and reading
        acks meanwhile; jobs that arrive during a sync form the next group.
        """
        if self.committing or not (self._jobs or self._records):
            return  # the group after the one being synced waits its turn
        taken = self._take()
        if self.journal.sync == "batch":
            self.committing = True
            self._writer = gevent.spawn(self._write, *taken)
        else:
            self._write(*taken)

    def _write(
        self,
        jobs: list[Envelope],
        keys: list[tuple[str, float]],
        group: Group,
        noted: _Notes,
    ) -> None:
        journal = self.journal
        stalled = JournalError(
            f"the journal write took over {COMMIT_TIMEOUT:g} s ({journal.path}); "
            "is the disk stalled?"
        )
        error = ""
        try:
            with gevent.Timeout(COMMIT_TIMEOUT, stalled):  # one timer per group
                if noted[0]:
                    journal.append_jobs(jobs, keys, noted[0])
                else:  # the hot path's call, as before
                    journal.append_jobs(jobs, keys)
        except JournalError as exc:
            error = str(exc)
        except Exception as exc:  # a bug must not leave the group parked for good
            error = f"the journal write failed ({type(exc).__name__}: {exc})"
        finally:
            self.committing = False
            self._writing = 0
            self._writer = None
            try:
                self._journaled(jobs, keys, error)
                for done in noted[1]:
                    done(error)
            finally:
                group.settle(error)
