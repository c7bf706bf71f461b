"""Routing by job name and queue: which workers run which jobs, and where each goes.

Each worker's READY says the names it runs, whether a default handler takes
the others, and the queues it listens on (`protocol.Serves`, kept on its
link). `Routes` keeps what the fleet announced (every worker ever READY in
this web's configuration, lost ones included: their jobs wait for them) and
plans each flush: every job to a link that runs its name and listens on its
queue, round-robin among those (`Rotation`), with the credit rules
unchanged. A job whose workers are all full waits in its lane (by name and
queue: `Queues.lanes`) so that the jobs behind it go on: no head-of-line
blocking across names or queues, and the order within a lane kept.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator, Iterator, Sequence
from typing import TYPE_CHECKING

from greenpipe.errors import Unavailable
from greenpipe.jobs import DEFAULT_QUEUE
from greenpipe.link import Link
from greenpipe.protocol import DEFAULT_QUEUES, EVERYTHING, Serves
from greenpipe.rotation import Rotation

if TYPE_CHECKING:
    from greenpipe.jobs import Envelope
    from greenpipe.queues import Queues

SHOWN_NAMES = 20  # names an error message lists, at most


class Routes:
    """The names the fleet runs, and the plan of each flush (see module doc)."""

    def __init__(self, links: Sequence[Link], removing: Sequence[Link] = ()) -> None:
        self.links = links  # the fleet's list: it sees additions and removals
        self.removing = removing  # removed live: they take nothing new
        self.rotation = Rotation(links, self)
        self.known: frozenset[bytes] = frozenset()  # names some worker announced
        self.dropped: frozenset[bytes] = frozenset()  # known once, run by none now
        self._ever: frozenset[bytes] = frozenset()  # every name ever known
        self.queues: frozenset[bytes] = DEFAULT_QUEUES  # some worker listens on each
        self.dropped_queues: frozenset[bytes] = frozenset()  # listened to once, not now
        self._ever_queues: frozenset[bytes] = frozenset()
        self.single_queue = True  # every worker listens on the default queue alone
        self._announced: list[Serves] = []
        self.orphans: list[Envelope] = []  # jobs of a dropped name: to give up
        self.default = True  # some worker runs every name (a default handler)
        self.uniform = True  # every worker runs the same names
        self.everything = True  # every worker runs every name: no routing at all
        self._serves: Serves | None = None  # the one set of a uniform fleet

    def update(self) -> None:
        """Read again what the workers announced (a READY, a worker added or gone)."""
        announced = [link.serves for link in self.links
                     if link.ever_ready and link not in self.removing]  # fmt: skip
        self._announced = announced
        self.known = frozenset().union(*(serves.names for serves in announced))
        self.default = any(serves.default for serves in announced)
        # A name (or queue) some worker ran in this web's life and none runs
        # now (its workers removed, or back with another registry): its jobs
        # would wait for ever; `plan` hands them to `orphans` (dead-lettered).
        self._ever |= self.known
        self.dropped = frozenset() if self.default else self._ever - self.known
        self.queues = frozenset().union(*(serves.queues for serves in announced))
        self._ever_queues |= self.queues
        self.dropped_queues = self._ever_queues - self.queues
        self.single_queue = all(s.queues == DEFAULT_QUEUES for s in announced)
        self.everything = self.single_queue and all(s.default for s in announced)
        first = announced[0] if announced else EVERYTHING
        self.uniform = self.everything or all(s == first for s in announced)
        self._serves = first if self.uniform else None

    def runnable(self, name: bytes, queue: bytes = DEFAULT_QUEUE) -> bool:
        """True if some worker (ready or not) announced it runs `name` from `queue`."""
        if self.single_queue:
            return queue == DEFAULT_QUEUE and (self.default or name in self.known)
        return any(serves.runs(name, queue) for serves in self._announced)

    def runs_now(self, queue: bytes | None = None) -> str:
        """The names the workers run (those listening on `queue`), as an error
        message lists them."""
        known = self.known
        if queue is not None and not self.single_queue:
            on = [serves for serves in self._announced if queue in serves.queues]
            known = frozenset().union(*(serves.names for serves in on))
        return _listed(known, "no names")

    def orphan_note(self, job: Envelope) -> str:
        """Why a job of a dropped name or queue is given up on (see `plan`)."""
        if job.queue in self.dropped_queues:
            where = job.queue.decode("ascii")
            return (
                f"no worker listens on queue {where!r} any more (its workers were "
                "removed or now have other QUEUES; they listen on "
                f"{_listed(self.queues, 'none')}): re-send it from the dead-letter "
                "file once a worker listens on it"
            )
        name = (job.name or job.path).decode("utf-8", "replace")
        return (
            f"no worker runs jobs named {name!r} any more (its workers were "
            f"removed or now run other names; they run {self.runs_now()}): re-send "
            "it from the dead-letter file once a worker runs it"
        )

    def check(self, name: bytes, queue: bytes = DEFAULT_QUEUE) -> None:
        """Raise `Unavailable` if no worker this web knows runs jobs named
        `name` from `queue`.

        Workers lost that announced it count: the job waits for them (bounded
        by MAX_PENDING, as every waiting job).
        """
        if self.runnable(name, queue):
            return
        silent = [link.name for link in self.links if not link.ever_ready]
        waiting = f"; not READY yet: {', '.join(silent)}" if silent else ""
        text, where = name.decode("utf-8", "replace"), queue.decode("ascii")
        if queue not in self.queues:
            raise Unavailable(
                f"no worker listens on queue {where!r}: the workers listen on "
                f"{_listed(self.queues, 'none')}{waiting}. Check the queue's name, "
                f"or start a worker with QUEUES={where}",
                retry_after=5,
            )
        if not self.single_queue and (self.default or name in self.known):
            raise Unavailable(
                f"no worker listening on queue {where!r} runs jobs named {text!r}: "
                f"those run {self.runs_now(queue)}{waiting}. Push it to a queue "
                f"whose workers run it, or add {where} to the QUEUES of a worker "
                "that does",
                retry_after=5,
            )
        raise Unavailable(
            f"no worker runs jobs named {text!r}: the workers run "
            f"{self.runs_now()}, and none has a default handler{waiting}. Check "
            f"the job's name, or start a worker whose HANDLER has "
            f"@handlers.job({text!r})",
            retry_after=5,
        )

    def plan(self, queues: Queues) -> Iterator[tuple[Link, Envelope]]:
        """Each queued job that a worker running its name has credit for, and
        that worker, in turn; the caller assigns the job before asking again.

        Jobs that no such worker can take now wait in their name's lane;
        lanes go first (their jobs are older than the queues'). When no
        worker has credit at all, the queues stay as they are.
        """
        rotation, lanes = self.rotation, queues.lanes
        if self.dropped or self.dropped_queues:
            self._orphan(queues)
        if self.uniform and not lanes:  # every worker runs the same: as ever
            if (yield from self._uniform(queues)):
                return
        choose_for, known = rotation.choose_for, self.known
        blocked: set[tuple[bool, bytes | None, bytes]] = set()  # full this flush
        if lanes:
            _merge_given_back(queues)
        # Suspects first, as without routing; in each kind, the lanes first:
        # their jobs are older than the queue's (given-back ones merged above).
        for queue, suspect in ((queues.retry, True), (queues.fresh, False)):
            for key in [key for key in lanes if key[0] is suspect]:
                _, name, on = key
                route = (suspect, name if name in known else None, on)
                if route in blocked:
                    continue
                lane = lanes[key]
                while lane:
                    link = choose_for(name, suspect, on)
                    if link is None:
                        blocked.add(route)
                        break
                    yield link, lane.popleft()
                if not lane:
                    del lanes[key]
            while queue:
                job = queue[0]
                name = job.name or job.path  # a forwarded request: by its path
                key = (suspect, name, job.queue)
                if key not in lanes:  # else it goes behind its lane's older jobs
                    route = (suspect, name if name in known else None, job.queue)
                    if route not in blocked:
                        link = choose_for(name, suspect, job.queue)
                        if link is not None:
                            queue.popleft()
                            yield link, job
                            continue
                        blocked.add(route)
                if not rotation.any_can_take():
                    break  # every worker is full: the queue waits as it is
                lanes.setdefault(key, deque()).append(queue.popleft())

    def _orphan(self, queues: Queues) -> None:
        """Jobs of a dropped name or queue, out of the queues and lanes into
        `orphans`."""
        dropped, gone = self.dropped, self.dropped_queues

        def orphan(name: bytes, queue: bytes) -> bool:
            return name in dropped or queue in gone

        for key in [key for key in queues.lanes if orphan(key[1], key[2])]:
            self.orphans.extend(queues.lanes.pop(key))
        for queue in (queues.retry, queues.fresh):
            if any(orphan(job.name or job.path, job.queue) for job in queue):
                kept: list[Envelope] = []
                for job in queue:
                    lost = orphan(job.name or job.path, job.queue)
                    (self.orphans if lost else kept).append(job)
                queue.clear()
                queue.extend(kept)

    def _uniform(self, queues: Queues) -> Generator[tuple[Link, Envelope], None, bool]:
        """`plan` in a uniform fleet: one round-robin over every worker, as
        before routing by name; returns False at a job that no worker runs
        (a replayed one, or of a queue none listens on: the general walk
        takes over), else True."""
        choose = self.rotation.choose
        serves = self._serves or EVERYTHING
        names = None if self.everything or serves.default else serves.names
        listened = serves.queues
        plain = listened == DEFAULT_QUEUES  # then only another queue is checked
        for queue, suspect in ((queues.retry, True), (queues.fresh, False)):
            while queue:
                job = queue[0]
                if names is not None and (job.name or job.path) not in names:
                    return False
                on = job.queue
                if (not plain or on != DEFAULT_QUEUE) and on not in listened:
                    return False
                link = choose(suspect)
                if link is None:
                    break
                yield link, queue.popleft()
        return True


def _merge_given_back(queues: Queues) -> None:
    """Jobs sent before and back at the head of their queue (a worker gave
    them back, lost them, or they could not be sent) are older than the never
    sent jobs of their name waiting in its lane: each goes into the lane
    ahead of those, so a name's jobs still leave in the order accepted."""
    lanes = queues.lanes
    for queue, suspect in ((queues.retry, True), (queues.fresh, False)):
        kept: list[Envelope] = []
        while queue and queue[0].attempt:  # the given-back run at the head
            job = queue.popleft()
            lane = lanes.get((suspect, job.name or job.path, job.queue))
            if lane is None:
                kept.append(job)
                continue
            at = next(
                (
                    i
                    for i, waiting in enumerate(lane)
                    if not waiting.attempt or waiting.accepted_at > job.accepted_at
                ),
                len(lane),
            )
            lane.insert(at, job)
        queue.extendleft(reversed(kept))


def _listed(names: frozenset[bytes], none: str) -> str:
    """Names (job names, queues) as an error message lists them: 20 at most."""
    shown = sorted(n.decode("utf-8", "replace") for n in names)
    more = len(shown) - SHOWN_NAMES
    listed = ", ".join(repr(n) for n in shown[:SHOWN_NAMES]) or none
    return listed + (f" and {more} more" if more > 0 else "")
