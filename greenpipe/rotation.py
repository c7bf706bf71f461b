"""The round-robin choice of the next worker, with its one exception."""

from __future__ import annotations

from collections.abc import Sequence

from greenpipe.link import Link


class Rotation:
    """Round-robin over links in their configured order, skipping those that can't take.

    With every link able to take jobs, job *i* goes to link *i mod N*, exactly.
    A re-sent job (a suspect: it may be what killed its last worker) only goes
    to a link holding no other suspect, so one poison job cannot drag the jobs
    it was sent with through MAX_DELIVERIES losses to the dead-letter file.
    """

    def __init__(self, links: Sequence[Link]) -> None:
        self.links = links
        self._cursor = 0  # the next link in round-robin order

    def choose(self, suspect: bool = False) -> Link | None:
        """The next link that can take a job now, or None (all full or gone)."""
        links, count, start = self.links, len(self.links), self._cursor
        for step in range(count):
            link = links[(start + step) % count]
            if link.can_take() and not (suspect and link.suspects):
                self._cursor = (start + step + 1) % count
                return link
        return None
