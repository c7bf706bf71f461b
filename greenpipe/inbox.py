"""The shared noun between the links' reader greenlets and the dispatcher greenlet."""

from __future__ import annotations

from typing import TYPE_CHECKING

import gevent.event

if TYPE_CHECKING:
    from greenpipe.link import Link

# What a reader read: a message's frames, or a monitor event and its value.
Unread = list[bytes] | tuple[int, int]


class Inbox:
    """The links holding what their readers read and nobody applied yet.

    Shared by the links and the dispatcher: a reader greenlet `post`s its
    link, which sets `wake` (the dispatcher greenlet's event); that greenlet
    `take`s the links, each once, in the order they were posted.
    """

    __slots__ = ("_links", "wake")

    def __init__(self, wake: gevent.event.Event) -> None:
        self._links: dict[Link, None] = {}  # an ordered set
        self.wake = wake

    def post(self, link: Link) -> None:
        self._links[link] = None
        self.wake.set()

    def take(self) -> list[Link]:
        links = list(self._links)
        self._links.clear()
        return links
