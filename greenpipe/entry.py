"""What web.py and server.py share: logging, settings, and the exit codes."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

import gevent
import gevent.event

from greenpipe.config import configure_logging, early_log_format
from greenpipe.errors import ConfigError, GreenpipeError

log = logging.getLogger("greenpipe")
S = TypeVar("S")


def main(
    load: Callable[[Sequence[str] | None], S],
    run: Callable[[S], int],
    argv: Sequence[str] | None = None,
) -> int:
    """Load settings, then run: 2 on a bad setting, 1 on another greenpipe error.

    Anything else keeps its traceback: it is a bug, not a user's mistake.
    The current directory goes first on ``sys.path`` (as gunicorn, celery, rq
    and ``flask --app`` do), so ``--handler myapp:handlers`` and ``--app
    myapp:app`` find ``myapp.py`` where the user runs the console script.
    """
    _current_directory_first()
    configure_logging("INFO", early_log_format(sys.argv[1:] if argv is None else argv))
    try:
        settings = load(argv)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    configure_logging(settings.log_level, settings.log_format)  # type: ignore[attr-defined]
    try:
        return run(settings)
    except ConfigError as exc:  # found late, e.g. a HANDLER that does not import
        log.error("%s", exc)
        return 2
    except GreenpipeError as exc:
        log.error("%s", exc)
        return 1


def stop_signals(name: str) -> gevent.event.Event:
    """An Event that SIGTERM or SIGINT sets; a second signal exits at once (1).

    The caller's main greenlet waits on it, then stops in order. `name`
    starts the log line ("web", "schedule").
    """
    stopping = gevent.event.Event()

    def on_signal() -> None:
        if stopping.is_set():
            log.warning("%s: second signal; exiting now", name)
            raise SystemExit(1)
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, on_signal)
    return stopping


def _current_directory_first() -> None:
    """Import the user's modules from where they run us, as ``python -m`` would."""
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.insert(0, here)
