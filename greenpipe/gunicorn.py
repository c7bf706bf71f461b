"""Run web.py (or your app) under gunicorn's gevent worker, K processes:

    gunicorn -c python:greenpipe.gunicorn -w 4 -b 127.0.0.1:4567 web:app

This config module sets the gevent worker class and two hooks:
`post_worker_init` starts the app's pipe in each worker process, after the
fork (never in the master: pyzmq#1330), so the barrier is met before the
first request instead of during it; `worker_exit` drains it (up to
DRAIN_TIMEOUT) and says DONE to the workers when gunicorn stops or recycles
that process. Settings come from the environment (``WORKERS=...``)
or the app's config, as always. Each gunicorn worker is one web process:
its own barrier, round-robin and journal slot, and a share of each
greenpipe worker's credit.

What greenpipe's own server does that gunicorn's gevent worker does not: a
yield after each keep-alive request (the extension does it for you, in a
teardown, when not on greenpipe's server), one write per response and
TCP_NODELAY (not done: gunicorn writes headers and body together already),
the HTTP deadlines and connection cap of the front door (use gunicorn's
``--timeout``/``--keep-alive``/``--worker-connections``, and a proxy).
"""

from __future__ import annotations

import logging
from typing import Any

from greenpipe.config import configure_logging
from greenpipe.errors import ConfigError
from greenpipe.ext import extension_of

worker_class = "gevent"
graceful_timeout = 10

log = logging.getLogger("greenpipe.gunicorn")


def post_worker_init(worker: Any) -> None:
    app = getattr(worker, "wsgi", None)
    ext = extension_of(app)
    if ext is not None:
        if not logging.getLogger().handlers:
            try:
                configure_logging(ext.settings(app).log_level)  # greenpipe's lines
            except ConfigError:
                pass  # raised again, with its message, by start() below
        pipe = ext.start(app)
        pipe.name = f"gunicorn worker pid {worker.pid}"


def worker_exit(server: Any, worker: Any) -> None:
    app = getattr(worker, "wsgi", None)
    ext = extension_of(app)
    if ext is not None:
        left = ext.stop(app)
        if left:
            log.warning("gunicorn worker %d: %d jobs unacknowledged at exit",
                        worker.pid, left)  # fmt: skip
