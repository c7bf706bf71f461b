"""The first statement of greenpipe's own programs: gevent's patches, cheaper.

``monkey.patch_all()`` tells gevent's plugins about each module it patches,
and looks the plugins up each time: about 25 reads of every installed
distribution's entry points. In a virtualenv of 80 distributions that was
0.18 s of CPU, a third of what a worker process spends to start (measured:
0.51 s a ``server.py`` start before, 0.33 s after). Here they are read once
for the whole patch. The patches are the same; only the lookups are shared.

gevent itself imports ``importlib.metadata`` before it patches anything (its
first event comes before the first patch), so importing it here first
changes nothing that is patched. Public as ``greenpipe.patch_all``; a
user's program may keep its plain ``monkey.patch_all()``.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

from gevent import monkey


def patch_all(**options: Any) -> None:
    """``gevent.monkey.patch_all(**options)``, with the entry points read once.

    `options` are gevent's own (``thread=False``, ...), passed as they are.
    """
    every = importlib.metadata.entry_points()

    def read_once(**params: Any) -> Any:
        return every.select(**params) if params else every

    real = importlib.metadata.entry_points
    importlib.metadata.entry_points = read_once
    try:
        monkey.patch_all(**options)
    finally:
        importlib.metadata.entry_points = real
