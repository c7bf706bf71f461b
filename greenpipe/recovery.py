"""What a journal owes, back into the queues: at start, and slots adopted running.

`Recovery` replays the journal's slot when the web starts and, each tick,
adopts the slots of siblings that stopped or died. It changes the shared
`Queues`, keys and books and returns whether jobs came back; the dispatcher
decides when to ask (not while draining, nor during a group commit) and wakes
its greenlet.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from greenpipe.admission import IdempotencyKeys
from greenpipe.books import Books
from greenpipe.journal import Journal, Replay
from greenpipe.queues import Queues
from greenpipe.throttle import Throttle

log = logging.getLogger("greenpipe.dispatcher")  # its lines keep their logger


class Recovery:
    """Replays a journal's owed jobs into the queues: due now, or at their time."""

    def __init__(
        self,
        journal: Journal,
        queues: Queues,
        keys: IdempotencyKeys,
        books: Books,
        clock: Callable[[], float],
    ) -> None:
        self.journal = journal
        self.queues = queues
        self.keys = keys
        self.books = books
        self._clock = clock
        self._throttle = Throttle(log)

    def start(self) -> None:
        """Open the journal and queue what it owes.

        Raises ConfigError or JournalError if the journal cannot be opened.
        """
        journal = self.journal
        replay = journal.open()
        self._replay(replay)
        self.keys.load(replay.keys)
        log.info(
            "journal: %s (slot %d, sync %s): replaying %d jobs owed%s",
            journal.path,
            journal.slot,
            journal.sync,
            len(replay.jobs),
            f", adopted slots {replay.adopted}" if replay.adopted else "",
        )

    def _replay(self, replay: Replay) -> None:
        """Queue what a journal owed: due jobs now, waiting ones at their time."""
        now, wall = self._clock(), time.time()
        for job in replay.jobs:
            job.accepted_at = now  # for the latency histogram
            if job.not_before > wall:  # a delay or a retry's backoff to wait out
                self.queues.later.add(job)
            else:
                self.queues.fresh.append(job)
        self.books.replayed += len(replay.jobs)

    def adopt(self) -> bool:
        """Adopt the journal slots whose process stopped or died; True if any.

        A sibling that stops (a rolling restart, gunicorn's reload) or dies
        leaves its slot's waiting jobs owed and its lock free; a process that
        runs takes them over here, between group commits, not only at its start.
        """
        journal = self.journal
        try:
            replay = journal.adopt()
        except OSError as exc:
            self._throttle.warning("adopt", "journal: cannot adopt an orphaned "
                                   "slot into %s (%s); trying again", journal.path,
                                   exc)  # fmt: skip
            return False
        if not replay.adopted:
            return False
        self._replay(replay)
        self.keys.load({**replay.keys, **self.keys.live()})
        said = log.warning if replay.jobs else log.info
        said("journal: adopted slots %s while running: %d jobs owed, replaying them",
             replay.adopted, len(replay.jobs))  # fmt: skip
        return True
