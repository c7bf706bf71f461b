"""Run web.py (or your app) under gunicorn, K processes, on greenpipe's HTTP server:

    gunicorn -c python:greenpipe.gunicorn -w 4 -b 127.0.0.1:4567 web:app

This config module sets the worker class, `greenpipe.gunicorn.Worker`
(gunicorn's gevent worker serving with greenpipe's own server), and two
hooks: `post_worker_init` starts the app's pipe in each worker process,
after the fork (never in the master: pyzmq#1330), so the barrier is met
before the first request instead of during it; `worker_exit` drains it (up
to DRAIN_TIMEOUT) and says DONE to the workers when gunicorn stops or
recycles that process. Settings come from the environment (``WORKERS=...``)
or the app's config, as always. Each gunicorn worker is one web process:
its own barrier, round-robin and journal slot, and a share of each
greenpipe worker's credit.

Why a worker class of its own: gunicorn's gevent worker looks at its
SIGTERM once a second, accepts meanwhile, and then closes its listener under
the connections the kernel has queued (measured: ~30 of 30 keep-alive
clients cut without an answer). This one stops at once, the way web.py
does (`greenpipe.httpserver.Server.stop`): queued connections are taken,
idle keep-alive ones closed, requests under way answered, and past the stop
window a JSON 503, never a reset or a plain 500. It also brings the front
door (header, body and idle deadlines, MAX_CONNECTIONS, the framing checks)
and the yield after each keep-alive request. gunicorn's own access log and
``--worker-connections`` are not used: greenpipe's ACCESS_LOG and
MAX_CONNECTIONS are.
"""

from __future__ import annotations

import logging
from typing import Any

import gevent.event
from gunicorn.workers.ggevent import GeventWorker

from greenpipe.books import stop_summary
from greenpipe.config import WebSettings, configure_logging, load_web
from greenpipe.errors import ConfigError
from greenpipe.ext import extension_of

worker_class = "greenpipe.gunicorn.Worker"
graceful_timeout = 10

log = logging.getLogger("greenpipe.gunicorn")
STOP_REQUESTS_S = 1.0  # as web.py: time given to requests in progress when stopping


class Worker(GeventWorker):
    """gunicorn's gevent worker, serving with `greenpipe.httpserver.Server`."""

    _stopping: gevent.event.Event | None = None

    def handle_exit(self, sig: Any, frame: Any) -> None:  # SIGTERM: stop now
        super().handle_exit(sig, frame)
        if self._stopping is not None:
            self._stopping.set()

    def run(self) -> None:
        from greenpipe.httpserver import make_server

        self._stopping = gevent.event.Event()
        settings = _settings(self.wsgi)
        servers = []
        for sock in self.sockets:
            sock.setblocking(1)
            host = sock.getsockname()[0] if sock.family != 1 else "localhost"
            servers.append(make_server(
                self.wsgi, str(host), 0, settings.max_connections,
                settings.access_log, sock=sock,
                timeouts=(settings.header_timeout, settings.idle_timeout,
                          settings.body_timeout),
            ))  # fmt: skip
        while self.alive:
            self.notify()  # gunicorn's liveness file: the master kills the silent
            self._stopping.wait(1.0)
        for server in servers:
            server.stop(timeout=STOP_REQUESTS_S)


def _settings(app: Any) -> WebSettings:
    """The app's greenpipe settings, or the defaults for an app without it."""
    ext = extension_of(app)
    if ext is not None:
        try:
            return ext.settings(app)
        except ConfigError:
            pass  # raised with its message when the pipe starts
    return load_web([], {}, {})


def post_worker_init(worker: Any) -> None:
    app = getattr(worker, "wsgi", None)
    ext = extension_of(app)
    if ext is not None:
        if not logging.getLogger().handlers:
            try:
                settings = ext.settings(app)  # greenpipe's lines, as web.py's
                configure_logging(settings.log_level, settings.log_format)
            except ConfigError:
                pass  # raised again, with its message, by start() below
        pipe = ext.start(app)
        pipe.name = f"gunicorn worker pid {worker.pid}"
        worker.greenpipe_pipe = pipe  # for its stop summary (worker_exit)


def worker_exit(server: Any, worker: Any) -> None:
    app = getattr(worker, "wsgi", None)
    ext = extension_of(app)
    if ext is not None:
        left = ext.stop(app)
        if left:
            log.warning("gunicorn worker %d: %d jobs unacknowledged at exit",
                        worker.pid, left)  # fmt: skip
        pipe = getattr(worker, "greenpipe_pipe", None)
        if pipe is not None:  # as web.py's last line
            log.info("gunicorn worker %d: %s", worker.pid, stop_summary(pipe.stats()))
