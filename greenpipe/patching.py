"""gevent's monkey patches: the web and the worker refuse to start without them.

Forgetting ``monkey.patch_all()`` is the first mistake a Celery or RQ user
makes. Without it the web says "serving" and "barrier met", then every
request hangs (the dispatcher's greenlets never run while a blocking call
holds the thread) and SIGTERM and SIGINT are ignored. Better to refuse at
start, naming the fix.
"""

from __future__ import annotations

from gevent import monkey

from greenpipe.errors import ConfigError

# What patch_all() patches that greenpipe depends on: sockets and select (the
# HTTP server, the sibling lookups), threads (locks in Flask and logging),
# time (sleep), signals (SIGTERM, SIGINT, SIGHUP through gevent's loop).
NEEDED = ("socket", "select", "thread", "time", "signal")


def unpatched() -> list[str]:
    """The modules greenpipe needs patched that are not; [] when all are."""
    return [name for name in NEEDED if not monkey.is_module_patched(name)]


def require_patched(what: str) -> None:
    """Raise ConfigError naming the fix if gevent's patches are not in place.

    `what` says who refuses ("serve(app)", "a Pipe", "the worker").
    """
    missing = unpatched()
    if missing:
        raise ConfigError(
            f"{what} needs gevent's monkey patches, and {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not patched: without them "
            "requests hang and SIGTERM is ignored. "
            "Make `from gevent import monkey; monkey.patch_all()` the first "
            "statement of your program, before importing Flask, greenpipe or "
            "your app (as web.py does); under gunicorn use -k gevent"
        )
