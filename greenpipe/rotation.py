"""The round-robin choice of the next worker, with its one exception, by job name."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from greenpipe.jobs import DEFAULT_QUEUE
from greenpipe.link import Link

if TYPE_CHECKING:
    from greenpipe.routing import Routes


class Rotation:
    """Round-robin over links in their configured order, skipping those that can't take.

    With every link able to take jobs, job *i* goes to link *i mod N*, exactly.
    A re-sent job (a suspect: it may be what killed its last worker) only goes
    to a link holding no other suspect, so one poison job cannot drag the jobs
    it was sent with through MAX_DELIVERIES losses to the dead-letter file.

    In a mixed fleet (workers that run different job names, or listen on
    different queues) `choose_for` keeps one cursor per name and queue: among
    the links that run a name from a queue, its jobs go round-robin, exactly.
    Names no worker announced (a default handler's) share one cursor a queue.
    """

    def __init__(self, links: Sequence[Link], routes: Routes | None = None) -> None:
        self.links = links
        self.routes = routes
        self._cursor = 0  # the next link in round-robin order
        # by (name, queue), in a mixed fleet
        self._cursors: dict[tuple[bytes | None, bytes], int] = {}

    def choose(self, suspect: bool = False) -> Link | None:
        """The next link that can take a job now, or None (all full or gone)."""
        links, count, start = self.links, len(self.links), self._cursor
        for step in range(count):
            link = links[(start + step) % count]
            if link.can_take() and not (suspect and link.suspects):
                self._cursor = (start + step + 1) % count
                return link
        return None

    def choose_for(
        self, name: bytes, suspect: bool = False, queue: bytes = DEFAULT_QUEUE
    ) -> Link | None:
        """The next link that runs jobs named `name` from `queue` and can take
        one now, or None.

        A uniform fleet (every worker runs the same names from the same
        queues) keeps the one cursor of `choose`: round-robin over all
        workers, as without routing.
        """
        routes = self.routes
        if routes is None:
            return self.choose(suspect)
        if routes.uniform:
            return self.choose(suspect) if routes.runnable(name, queue) else None
        known = name if name in routes.known else None
        if (known is None and not routes.default) or queue not in routes.queues:
            return None  # nobody runs it (a replayed job): it waits for one who does
        key = (known, queue)
        links, count = self.links, len(self.links)
        start = self._cursors.get(key, 0)
        for step in range(count):
            index = (start + step) % count
            link = links[index]
            if (
                link.can_take()
                and not (suspect and link.suspects)
                and link.serves.runs(name, queue)
            ):
                self._cursors[key] = (index + 1) % count
                return link
        return None

    def any_can_take(self) -> bool:
        """True if some link has credit now (for any name)."""
        return any(link.can_take() for link in self.links)
