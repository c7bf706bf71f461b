"""What web.py and server.py share: logging, settings, and the exit codes."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

from greenpipe.config import configure_logging
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
    configure_logging("INFO")
    try:
        settings = load(argv)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    logging.getLogger().setLevel(settings.log_level)  # type: ignore[attr-defined]
    try:
        return run(settings)
    except ConfigError as exc:  # found late, e.g. a HANDLER that does not import
        log.error("%s", exc)
        return 2
    except GreenpipeError as exc:
        log.error("%s", exc)
        return 1


def _current_directory_first() -> None:
    """Import the user's modules from where they run us, as ``python -m`` would."""
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.insert(0, here)
