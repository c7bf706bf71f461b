"""Routing by job name: which workers run which names, and which job goes where.

Each worker's READY says the names it runs and whether a default handler
takes the others (`protocol.Serves`, kept on its link). `Routes` keeps what
the fleet announced (every worker ever READY in this web's configuration,
lost ones included: their jobs wait for them) and plans each flush: every
job to a link that runs its name, round-robin among those (`Rotation`), with
the credit rules unchanged. A job whose workers are all full waits in its
name's lane (`Queues.lanes`) so that the jobs behind it, of other names, go
on: no head-of-line blocking across names, and the order within a name kept.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator, Iterator, Sequence
from typing import TYPE_CHECKING

from greenpipe.errors import Unavailable
from greenpipe.link import Link
from greenpipe.protocol import EVERYTHING, Serves
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
        self.orphans: list[Envelope] = []  # jobs of a dropped name: to give up
        self.default = True  # some worker runs every name (a default handler)
        self.uniform = True  # every worker runs the same names
        self.everything = True  # every worker runs every name: no routing at all
        self._serves: Serves | None = None  # the one set of a uniform fleet

    def update(self) -> None:
        """Read again what the workers announced (a READY, a worker added or gone)."""
        announced = [link.serves for link in self.links
                     if link.ever_ready and link not in self.removing]  # fmt: skip
        self.known = frozenset().union(*(serves.names for serves in announced))
        self.default = any(serves.default for serves in announced)
        # A name some worker ran in this web's life and none runs now (its
        # workers removed, or back with another registry): its jobs would wait
        # for ever; `plan` hands them to `orphans` (dead-lettered, with why).
        self._ever |= self.known
        self.dropped = frozenset() if self.default else self._ever - self.known
        self.everything = all(serves.default for serves in announced)
        first = announced[0] if announced else EVERYTHING
        self.uniform = self.everything or all(s == first for s in announced)
        self._serves = first if self.uniform else None

    def runnable(self, name: bytes) -> bool:
        """True if some worker (ready or not) announced it runs `name`."""
        return self.default or name in self.known

    def runs_now(self) -> str:
        """The names the workers run, as an error message lists them."""
        shown = sorted(n.decode("utf-8", "replace") for n in self.known)
        more = len(shown) - SHOWN_NAMES
        listed = ", ".join(repr(n) for n in shown[:SHOWN_NAMES]) or "no names"
        return listed + (f" and {more} more" if more > 0 else "")

    def check(self, name: bytes) -> None:
        """Raise `Unavailable` if no worker this web knows runs jobs named `name`.

        Workers lost that announced it count: the job waits for them (bounded
        by MAX_PENDING, as every waiting job).
        """
        if self.default or name in self.known:
            return
        listed = self.runs_now()
        silent = [link.name for link in self.links if not link.ever_ready]
        waiting = f"; not READY yet: {', '.join(silent)}" if silent else ""
        text = name.decode("utf-8", "replace")
        raise Unavailable(
            f"no worker runs jobs named {text!r}: the workers run {listed}, and "
            f"none has a default handler{waiting}. Check the job's name, or start "
            f"a worker whose HANDLER has @handlers.job({text!r})",
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
        if self.dropped:
            self._orphan(queues)
        if self.uniform and not lanes:  # every worker runs the same: as ever
            if (yield from self._uniform(queues)):
                return
        choose_for, known = rotation.choose_for, self.known
        blocked: set[tuple[bool, bytes | None]] = set()  # full for this flush
        if lanes:
            _merge_given_back(queues)
        # Suspects first, as without routing; in each kind, the lanes first:
        # their jobs are older than the queue's (given-back ones merged above).
        for queue, suspect in ((queues.retry, True), (queues.fresh, False)):
            for key in [key for key in lanes if key[0] is suspect]:
                name = key[1]
                route = (suspect, name if name in known else None)
                if route in blocked:
                    continue
                lane = lanes[key]
                while lane:
                    link = choose_for(name, suspect)
                    if link is None:
                        blocked.add(route)
                        break
                    yield link, lane.popleft()
                if not lane:
                    del lanes[key]
            while queue:
                job = queue[0]
                name = job.name or job.path  # a forwarded request: by its path
                key = (suspect, name)
                if key not in lanes:  # else it goes behind its name's older jobs
                    route = (suspect, name if name in known else None)
                    if route not in blocked:
                        link = choose_for(name, suspect)
                        if link is not None:
                            queue.popleft()
                            yield link, job
                            continue
                        blocked.add(route)
                if not rotation.any_can_take():
                    break  # every worker is full: the queue waits as it is
                lanes.setdefault(key, deque()).append(queue.popleft())

    def _orphan(self, queues: Queues) -> None:
        """Jobs of a dropped name, out of the queues and lanes into `orphans`."""
        dropped = self.dropped
        for key in [key for key in queues.lanes if key[1] in dropped]:
            self.orphans.extend(queues.lanes.pop(key))
        for queue in (queues.retry, queues.fresh):
            if any((job.name or job.path) in dropped for job in queue):
                kept: list[Envelope] = []
                for job in queue:
                    (
                        self.orphans if (job.name or job.path) in dropped else kept
                    ).append(job)
                queue.clear()
                queue.extend(kept)

    def _uniform(self, queues: Queues) -> Generator[tuple[Link, Envelope], None, bool]:
        """`plan` in a uniform fleet: one round-robin over every worker, as
        before routing by name; returns False at a job that no worker runs
        (a replayed one: the general walk takes over), else True."""
        choose = self.rotation.choose
        names = None if self.everything or self._serves is None else self._serves.names
        for queue, suspect in ((queues.retry, True), (queues.fresh, False)):
            while queue:
                if names is not None:
                    job = queue[0]
                    if (job.name or job.path) not in names:
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
            lane = lanes.get((suspect, job.name or job.path))
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
