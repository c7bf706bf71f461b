"""Whether a job is taken: the checks behind a 503, job ids, idempotency keys.

`Admission.take` names a job and hands it on once it is kept (after its
group commit, with a journal), or raises `Unavailable`: `check` says why a
job cannot be taken now (barrier not met, no worker ready, the web stopping,
too many waiting), `check_name` whether any worker runs its name, counted
by reason in the books. `IdempotencyKeys`
remembers which job a key made, for IDEMPOTENCY_TTL; a key answers only once
its job is kept, never before.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from greenpipe.errors import Unavailable
from greenpipe.jobs import new_job_id

if TYPE_CHECKING:  # the HTTP side imports check_key alone: no sockets, no gevent
    from gevent.event import Event

    from greenpipe.books import Books
    from greenpipe.config import PipeSettings
    from greenpipe.fleet import Fleet
    from greenpipe.jobs import Envelope
    from greenpipe.journal import Journal
    from greenpipe.journal.commit import Group, GroupCommit
    from greenpipe.queues import Queues

MAX_KEYS = 100_000  # idempotency keys remembered at once
KEY_RULE = "1-255 printable ASCII characters"


def check_key(key: str) -> str:
    """`key` if it is a valid idempotency key, else ValueError naming the rule."""
    if (
        not isinstance(key, str)
        or not 1 <= len(key) <= 255
        or not key.isascii()
        or not key.isprintable()
    ):
        raise ValueError(
            f"idempotency key {str(key)[:80]!r} is not {KEY_RULE}; use e.g. a "
            "UUID, or an order number"
        )
    return key


class IdempotencyKeys:
    """Idempotency key -> (job id, wall time it was made), for `ttl` seconds.

    At most MAX_KEYS are kept (the oldest go first). The journal reads `live`
    to carry keys past the segments that first held them.
    """

    def __init__(
        self, ttl: float, limit: int = MAX_KEYS, clock: Callable[[], float] = time.time
    ) -> None:
        self.ttl = ttl
        self.limit = limit
        self._clock = clock
        self._keys: dict[str, tuple[str, float]] = {}

    def find(self, key: str) -> str | None:
        """The id of the job `key` made, if within its window."""
        found = self._keys.get(key)
        if found is None or self._clock() - found[1] >= self.ttl:
            return None
        return found[0]

    def remember(self, key: str, job_id: str, at: float | None = None) -> None:
        keys = self._keys
        keys[key] = (job_id, self._clock() if at is None else at)
        if len(keys) > self.limit:
            del keys[next(iter(keys))]

    def load(self, keys: dict[str, tuple[str, float]]) -> None:
        """Keys replayed from the journal, with their own times."""
        horizon = self._clock() - self.ttl
        self._keys = {k: v for k, v in keys.items() if v[1] > horizon}

    def live(self) -> dict[str, tuple[str, float]]:
        horizon = self._clock() - self.ttl
        return {k: v for k, v in self._keys.items() if v[1] > horizon}

    def __len__(self) -> int:
        return len(self._keys)


class Admission:
    """Whether a job is taken now; its id; its key; its group commit.

    Jobs admitted and kept go into the shared `queues`, in order, and `wake`
    (the dispatcher greenlet's event) is set: it sends them, and writes the
    next group. Nothing here calls the dispatcher.
    """

    def __init__(
        self,
        settings: PipeSettings,
        fleet: Fleet,
        books: Books,
        keys: IdempotencyKeys,
        journal: Journal | None,
        queues: Queues,
        wake: Event,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from greenpipe.journal.commit import GroupCommit  # gevent: where jobs are taken

        self.settings = settings
        self.fleet = fleet
        self.books = books
        self.keys = keys
        self.queues = queues
        self._wake = wake
        self._clock = clock
        self._commit: GroupCommit | None = None
        if journal is not None:
            self._commit = GroupCommit(journal, queues, keys, wake)
        # Whose: siblings route a lookup by it (greenpipe.siblings). Not a secret.
        self.prefix = secrets.token_hex(4) + "-"

    def take(
        self, job: Envelope, key: str, draining: bool, job_id: str = ""
    ) -> Envelope:
        """Name `job` (`job_id`, else a new id) and hand it on once kept; or
        raise `Unavailable` (a 503).

        Before the barrier is met, waits for it up to READY_TIMEOUT; after
        that, never waits, except, with a journal, for the job's group commit:
        never a 202 for a job not kept. A repeated idempotency `key` answers
        with its first job's id once that job is kept, creating none;
        ValueError if `key` is not 1-255 printable ASCII characters.
        """
        if key:
            check_key(key)
            if not self.fleet.barrier.is_set():  # waits: a twin may come meanwhile
                self.check(self.queues.pending(), draining, bool(job.not_before))
            first = self._first_for(key)
            if first is not None:
                job.reply = None  # the first job's outcome is not this one's
                return job.named(first)
        # A name no worker runs is said first (a typo is the likelier fix than
        # waiting); before the barrier the names are known only after it.
        named = self.fleet.barrier.is_set()
        if named:
            self.check_name(job)
        self.check(self.queues.pending(), draining, bool(job.not_before))
        if not named:
            self.check_name(job)
        job.named(job_id or self.new_id())
        job.accepted_at = self._clock()
        if self._commit is None:
            if key:
                self.keys.remember(key, job.id)
            self.books.accepted += 1
            self.queues.add((job,))
            self._wake.set()  # send it
            return job
        group = self._commit.add(job, key)  # settled: queued, key remembered
        self._wake.set()  # the dispatcher greenlet writes the group
        # No timer per request (arming one costs more than the write): the
        # dispatcher greenlet always settles the group, and a stalled sync is
        # bounded by the group's own deadline (greenpipe.journal.commit).
        self._await(group)
        self.books.accepted += 1
        return job

    def _await(self, group: Group) -> None:
        group.wait()
        if group.error:
            self.books.reject("journal")
            raise Unavailable(f"job not accepted: {group.error}", 2)

    def _first_for(self, key: str) -> str | None:
        """The id of the job `key` made, once that job is kept; else None.

        A key whose job waits for its group commit waits for the same group.
        """
        commit = self._commit
        pending = commit.pending.get(key) if commit is not None else None
        if pending is not None:
            first, group = pending
            self._await(group)
            return first.id
        return self.keys.find(key)

    def commit(self) -> None:
        """Write what was taken since the last write (the dispatcher greenlet)."""
        if self._commit:
            self._commit.commit()

    @property
    def group_commit(self) -> GroupCommit | None:
        """The journal's group commit (None without a journal): settlement notes
        a cancel's or a retry's record in it."""
        return self._commit

    def in_commit(self) -> int:
        """Jobs admitted whose group commit has not settled yet."""
        return len(self._commit) if self._commit is not None else 0

    def close(self) -> None:
        """Settle every group: the one being written finishes, the rest get 503s."""
        if self._commit is not None:
            self._commit.close()

    def new_id(self) -> str:
        """A new job id of this process (`greenpipe.jobs.new_job_id`)."""
        return new_job_id(self.prefix)

    def owns(self, job_id: str) -> bool:
        """True if `job_id` was made by this process (whatever became of it)."""
        return job_id.startswith(self.prefix)

    def check_name(self, job: Envelope) -> None:
        """Raise `Unavailable` (a 503) if no worker this web knows runs `job`'s
        name from its queue.

        After the barrier (`check` waits for it): a worker announces its
        names and queues in READY (greenpipe.routing).
        """
        try:
            self.fleet.routes.check(job.name or job.path, job.queue)
        except Unavailable:
            self.books.reject("no_handler")
            raise

    def check(self, queued: int, draining: bool, delayed: bool = False) -> None:
        """Raise `Unavailable` (a 503) if a job cannot be taken now; else return.

        Before the barrier is met, waits for it up to READY_TIMEOUT; after
        that, never waits. Jobs beyond what the ready workers have credit for
        are "waiting": at most MAX_PENDING of them. A `delayed` job waits for
        its time instead: at most MAX_SCHEDULED of those.
        """
        fleet, settings = self.fleet, self.settings
        if not fleet.barrier.is_set() and not fleet.barrier.wait(
            settings.ready_timeout
        ):
            self.books.reject("barrier")
            raise Unavailable(fleet.barrier_message(), retry_after=2)
        if draining:
            self.books.reject("stopping")
            raise Unavailable("this web process is stopping; retry on another", 1)
        if not fleet.any_ready():
            self.books.reject("no_worker")
            raise Unavailable(
                f"no worker can take jobs now ({fleet.states()}); retry soon"
            )
        if delayed:
            scheduled = len(self.queues.later)
            if scheduled >= settings.max_scheduled:
                self.books.reject("max_scheduled")
                raise Unavailable(
                    f"{scheduled} delayed jobs already wait for their time "
                    f"(MAX_SCHEDULED={settings.max_scheduled}); retry later, or "
                    "raise MAX_SCHEDULED"
                )
        elif queued >= settings.max_pending:  # only then can too many be waiting
            # Jobs in a name's lane wait whatever credit other names' workers
            # have free: that credit is no room for them (routing by name).
            waiting = max(queued - fleet.free_credit(), self.queues.in_lanes())
            if waiting >= settings.max_pending:
                self.books.reject("max_pending")
                raise Unavailable(
                    f"{waiting} jobs already wait for a worker (MAX_PENDING="
                    f"{settings.max_pending}); retry soon, or add workers"
                )
