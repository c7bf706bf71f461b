"""gevent's monkey patches: the web refuses to serve without them.

Forgetting ``monkey.patch_all()`` is the first mistake a Celery or RQ user
makes. Without it ``serve(app)`` said "serving" and "barrier met", then every
request hung (the dispatcher's greenlets never ran while a blocking call
held the thread) and SIGTERM and SIGINT were ignored. Better to refuse at
start, naming the fix.
"""

from __future__ import annotations

import logging
import threading

from gevent import monkey

from greenpipe.errors import ConfigError

log = logging.getLogger(__name__)

# What patch_all() patches that greenpipe depends on: sockets and select (the
# HTTP server, the sibling lookups), threading (locks in Flask and logging),
# time (sleep), signals (SIGTERM, SIGINT, SIGHUP through gevent's loop).
NEEDED = ("socket", "select", "threading", "time", "signal")
_warned: set[str] = set()


def unpatched() -> list[str]:
    """The modules greenpipe needs patched that are not; [] when all are."""
    return [name for name in NEEDED if not monkey.is_module_patched(name)]


def _problem(what: str, missing: list[str]) -> str:
    return (
        f"{what} needs gevent's monkey patches, and {', '.join(missing)} "
        f"{'is' if len(missing) == 1 else 'are'} not patched: without them "
        "requests hang and SIGTERM is ignored. Make `from gevent import monkey; "
        "monkey.patch_all()` the first statement of your program, before "
        "importing Flask, greenpipe or your app (as web.py does); under "
        "gunicorn use -c python:greenpipe.gunicorn (its gevent workers, patched)"
    )


def require_patched(what: str) -> None:
    """Raise ConfigError naming the fix if gevent's patches are not in place."""
    missing = unpatched()
    if missing:
        raise ConfigError(_problem(what, missing))


def check_pipe_start() -> None:
    """A Pipe starting without the patches: refused off the main thread.

    Pushed from a thread of a threaded server (``flask run``, gunicorn's
    threads), jobs would wait for a hub that never runs: ConfigError. On the
    main thread (Flask's test client in a test, a script) the hub runs
    whenever the caller waits on greenpipe, so it works: one warning.
    """
    missing = unpatched()
    if not missing:
        return
    if threading.current_thread() is not threading.main_thread():
        raise ConfigError(_problem("a Pipe started from a thread", missing))
    if "pipe" not in _warned:
        _warned.add("pipe")
        log.warning("%s", _problem("a Pipe serving requests", missing))
