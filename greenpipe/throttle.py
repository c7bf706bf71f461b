"""Rate-limited logging: a flood of the same warning becomes one line per interval."""

from __future__ import annotations

import logging
import time


class Throttle:
    """Logs at most one record per key per `interval` seconds, counting the rest.

    The next record for a key after a quiet spell says how many were suppressed,
    so counts stay visible while garbage input cannot fill the disk.
    """

    def __init__(self, logger: logging.Logger, interval: float = 5.0) -> None:
        self._log = logger
        self._interval = interval
        self._next: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(
        self, level: int, key: str, message: str, *args: object, exc_info: bool = False
    ) -> None:
        now = time.monotonic()
        if now < self._next.get(key, 0.0):
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        if len(self._next) > 1000:  # keys come from peers: keep the table bounded
            self._next.clear()
        self._next[key] = now + self._interval
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            message += f" ({suppressed} similar messages suppressed)"
        self._log.log(level, message, *args, exc_info=exc_info)

    def warning(self, key: str, message: str, *args: object) -> None:
        self.log(logging.WARNING, key, message, *args)

    def error(self, key: str, message: str, *args: object) -> None:
        self.log(logging.ERROR, key, message, *args)

    def exception(self, key: str, message: str, *args: object) -> None:
        """ERROR with the current traceback: a bug, kept alive but not hidden."""
        self.log(logging.ERROR, key, message, *args, exc_info=True)
