"""Running a web process: serve(app), web.py's run, and the WEB_PROCESSES supervisor.

`run` starts the HTTP server (`greenpipe.httpserver`) and the pipe, answers
SIGHUP (re-read WORKERS_FILE) and, on SIGTERM/SIGINT, stops accepting, drains
and exits 0. `supervise` runs WEB_PROCESSES children on one port.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace

import gevent
import gevent.event
from flask import Flask

import greenpipe
from greenpipe import entry
from greenpipe.books import stop_summary
from greenpipe.config import (
    WebSettings,
    load_web,
    read_workers_file,
    to_flags,
)
from greenpipe.errors import ConfigError
from greenpipe.ext import Greenpipe, extension_of
from greenpipe.httpserver import make_server
from greenpipe.patching import require_patched
from greenpipe.pipe import Pipe
from greenpipe.routes import json_errors
from greenpipe.supervisor import READY_ENV, Supervisor, reserve
from greenpipe.values import loopback

log = logging.getLogger(__name__)
STOP_REQUESTS_S = 1.0  # time given to requests in progress when stopping
OPS_CONNECTIONS = 64  # connections served at once on OPS_PORT


def default_app() -> Flask:
    """The app of web.py and ``greenpipe web``: every request one job."""
    app = Flask("greenpipe")
    pipe = Greenpipe(app, ops_routes=True)  # the operator's server, as web.py
    app.register_blueprint(pipe.forwarding())
    json_errors(app)
    return app


def serve(app: Flask, argv: Sequence[str] | None = None) -> int:
    """Serve `app` (with `Greenpipe` set up on it) as web.py does; an exit code.

    Settings: flags, then ``app.config``'s ``GREENPIPE_*``, then the
    environment, then defaults. Starts the pipe, serves HTTP on a pooled
    gevent server until SIGTERM/SIGINT, then stops accepting, drains (up to
    DRAIN_TIMEOUT) and exits 0. A bad setting exits 2 with its message.
    """
    return entry.main(
        lambda args: load_web(args, os.environ, app.config),
        lambda settings: run(settings, app),
        argv,
    )


def run(settings: WebSettings, app: Flask | None = None) -> int:
    """Serve HTTP and feed the workers until SIGTERM/SIGINT, then drain and exit 0."""
    require_patched("serve(app)" if app is not None else "the web")
    if settings.web_processes > 1:
        return supervise(settings)
    if app is None:
        app = default_app()
    stopping = entry.stop_signals("web")
    ext = extension_of(app)
    if ext is None:
        raise ConfigError(
            "serve(app): greenpipe is not set up on this app; call Greenpipe(app) "
            "before serving it"
        )
    ext.use_settings(settings, app)  # the command line's word is the last
    server = make_server(
        app,
        settings.host,
        settings.port,
        settings.max_connections,
        settings.access_log,
        settings.reuse_port,
        timeouts=(
            settings.header_timeout,
            settings.idle_timeout,
            settings.body_timeout,
        ),  # fmt: skip
    )
    ops = None
    if settings.ops_port >= 0:
        # Shared only for the moment two processes of one slot overlap (a
        # rolling restart), when both are a WEB_PROCESSES supervisor's children.
        ops = make_server(
            app, settings.host, settings.ops_port, OPS_CONNECTIONS,
            settings.access_log, settings.reuse_port, own_port=True,
        )  # fmt: skip
    pipe = ext.start(app)

    def on_hangup() -> None:  # SIGHUP: re-read WORKERS_FILE, add and remove
        if not settings.workers_file:
            log.warning("web: SIGHUP, but no WORKERS_FILE to re-read; set it "
                        "to add and remove workers live")  # fmt: skip
            return
        try:
            endpoints = read_workers_file(settings.workers_file)
        except ConfigError as exc:
            log.error("web: SIGHUP: %s; keeping the workers as they are", exc)
            return
        added, removed = pipe.reconfigure([str(e) for e in endpoints])
        log.info("web: SIGHUP: %s: added %s, removing %s", settings.workers_file,
                 ", ".join(added) or "none", ", ".join(removed) or "none")  # fmt: skip

    gevent.signal_handler(signal.SIGHUP, on_hangup)
    pipe.name = f"web http://{settings.host}:{server.server_port} pid {os.getpid()}"
    workers = pipe.workers()
    log.info(
        "web: serving http://%s:%d (pid %d), feeding %d %s: %s",
        settings.host,
        server.server_port,
        os.getpid(),
        len(workers),
        "worker" if len(workers) == 1 else "workers",
        ", ".join(workers),
    )
    if ops is not None:
        log.info(
            "web: pid %d's own /metrics, /stats, /healthz, /dashboard, /backlog, "
            "/failed: http://%s:%d",
            os.getpid(), settings.host, ops.server_port,
        )  # fmt: skip
    # The operator's routes answer on OPS_PORT, and on the app's port if opted in.
    exposed = ops is not None or ext.public_ops_routes(app)
    if exposed and not loopback(settings.host) and (settings.metrics
                                                    or settings.dashboard):  # fmt: skip
        log.warning(
            "web: /metrics and /dashboard are served to anyone who can reach %s "
            "(they show no job bodies, and the dashboard can re-send dead letters); "
            "GREENPIPE_METRICS=false and GREENPIPE_DASHBOARD=false turn them off",
            settings.host,
        )
    ready_fd = os.environ.pop(READY_ENV, "")
    if ready_fd:  # a WEB_PROCESSES child: tell the supervisor once it serves
        gevent.spawn(_say_serving, pipe, int(ready_fd))
    stopping.wait()
    log.info("web: stopping; finishing requests, then waiting for acknowledgements")
    servers = [server] if ops is None else [server, ops]
    gevent.joinall([gevent.spawn(s.stop, STOP_REQUESTS_S) for s in servers])
    # Drains (the dispatcher says where what is still owed went), says DONE, closes.
    ext.stop(app, settings.drain_timeout)
    log.info("web: %s", stop_summary(pipe.stats()))
    return 0


def _say_serving(pipe: Pipe, fd: int) -> None:
    """Write one byte to the supervisor's pipe once listening and the barrier is met."""
    try:
        while not pipe.wait_ready(60.0):
            pass
        os.write(fd, b"1")
    finally:
        os.close(fd)


def supervise(settings: WebSettings) -> int:
    """Run WEB_PROCESSES web.py children on one port (SO_REUSEPORT), kept at N.

    Each child is a whole web.py: its own dispatcher, barrier and exact
    round-robin over its own jobs, its own /stats and journal slot. Children
    are started with subprocess (never fork a process that runs gevent or
    ZeroMQ). One that dies is replaced (`greenpipe.supervisor`); SIGUSR2
    replaces them one at a time; SIGHUP is passed on; SIGTERM/SIGINT stop all.
    """
    port_held = reserve(settings.host, settings.port)  # fixes port 0
    port = port_held.getsockname()[1]
    child = replace(settings, web_processes=1, reuse_port=True, port=port)
    # The children run what this process runs: the same script (web.py, or a
    # user's own), else greenpipe's own app.
    script = sys.argv[0] if sys.argv[0].endswith(".py") else ""
    start = (
        [script] if script and os.path.isfile(script) else ["-m", "greenpipe", "web"]
    )

    def argv(index: int) -> list[str]:
        own = child.ops_port + index if child.ops_port > 0 else child.ops_port
        return [sys.executable, *start, *to_flags(replace(child, ops_port=own))]

    # The children import greenpipe from where this process did (a checkout
    # run as python web.py, or site-packages).
    home = os.path.dirname(os.path.dirname(os.path.abspath(greenpipe.__file__)))
    path = os.pathsep.join(filter(None, [home, os.environ.get("PYTHONPATH")]))
    supervisor = Supervisor(
        argv,
        {**os.environ, "PYTHONPATH": path},
        settings.web_processes,
        stop_timeout=settings.drain_timeout + STOP_REQUESTS_S + 1,
        ready_timeout=settings.ready_timeout,
        url=f"http://{settings.host}:{port}",
    )
    try:
        return supervisor.run()
    finally:
        port_held.close()
