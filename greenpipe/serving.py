"""Running a web process: serve(app), web.py's run, and the WEB_PROCESSES supervisor.

`run` starts the HTTP server (`greenpipe.httpserver`) and the pipe, answers
SIGHUP (re-read WORKERS_FILE) and, on SIGTERM/SIGINT, stops accepting, drains
and exits 0. `supervise` runs WEB_PROCESSES children on one port.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import replace

import gevent
import gevent.event
from flask import Flask

import greenpipe
from greenpipe import entry
from greenpipe.config import (
    WebSettings,
    load_web,
    loopback,
    read_workers_file,
    to_flags,
)
from greenpipe.errors import ConfigError
from greenpipe.ext import Greenpipe, extension_of
from greenpipe.httpserver import listener, make_server
from greenpipe.routes import json_errors

log = logging.getLogger(__name__)
STOP_REQUESTS_S = 1.0  # time given to requests in progress when stopping
OPS_CONNECTIONS = 64  # connections served at once on OPS_PORT


def default_app() -> Flask:
    """The app of web.py and ``greenpipe web``: every request one job."""
    app = Flask("greenpipe")
    pipe = Greenpipe(app)
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
    if settings.web_processes > 1:
        return supervise(settings)
    if app is None:
        app = default_app()
    stopping = gevent.event.Event()

    def on_signal() -> None:
        if stopping.is_set():
            log.warning("web: second signal; exiting now")
            raise SystemExit(1)
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, on_signal)

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
        ops = make_server(app, settings.host, settings.ops_port, OPS_CONNECTIONS,
                          settings.access_log, own_port=True)  # fmt: skip
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
    log.info(
        "web: serving http://%s:%d (pid %d), feeding %d workers: %s",
        settings.host,
        server.server_port,
        os.getpid(),
        len(pipe.workers()),
        ", ".join(pipe.workers()),
    )
    if ops is not None:
        log.info(
            "web: pid %d's own /metrics, /stats, /healthz, /dashboard: http://%s:%d",
            os.getpid(), settings.host, ops.server_port,
        )  # fmt: skip
    if not loopback(settings.host) and (settings.metrics or settings.dashboard):
        log.warning(
            "web: /metrics and /dashboard are served to anyone who can reach %s "
            "(they show no job bodies, and the dashboard can re-send dead letters); "
            "GREENPIPE_METRICS=false and GREENPIPE_DASHBOARD=false turn them off",
            settings.host,
        )
    stopping.wait()
    log.info("web: stopping; finishing requests, then waiting for acknowledgements")
    servers = [server] if ops is None else [server, ops]
    gevent.joinall([gevent.spawn(s.stop, STOP_REQUESTS_S) for s in servers])
    # Drains (the dispatcher says where what is still owed went), says DONE, closes.
    ext.stop(app, settings.drain_timeout)
    stats = pipe.stats()
    log.info(
        "web: stopped; accepted %d, acknowledged %d (%d failed), re-sent %d, "
        "dead-lettered %d",
        stats["accepted"],
        stats["acked"],
        stats["failed"],
        stats["resent"],
        stats["dead_lettered"],
    )
    return 0


def supervise(settings: WebSettings) -> int:
    """Run WEB_PROCESSES web.py children on one port (SO_REUSEPORT); stop them together.

    Each child is a whole web.py: its own dispatcher, barrier and exact
    round-robin over its own jobs, and its own /stats. Children are started
    with subprocess (never fork a process that runs gevent or ZeroMQ). If one
    exits, the others are stopped too and this process exits 1, as honcho does.
    """
    reserve = listener(settings.host, settings.port, reuse_port=True)  # fixes port 0
    port = reserve.getsockname()[1]
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
    env = {**os.environ, "PYTHONPATH": path}
    children = [
        subprocess.Popen(argv(i), env=env) for i in range(settings.web_processes)
    ]
    reserve.close()  # bound to the port until the children had bound it too
    log.info(
        "web: %d processes sharing http://%s:%d (pids %s)",
        len(children), settings.host, port, ", ".join(str(c.pid) for c in children),
    )  # fmt: skip
    stopping = gevent.event.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stopping.set)

    def hangup() -> None:  # each child re-reads WORKERS_FILE
        for c in children:
            if c.poll() is None:
                c.send_signal(signal.SIGHUP)

    gevent.signal_handler(signal.SIGHUP, hangup)
    watchers = [gevent.spawn(c.wait) for c in children]
    for watcher in watchers:
        watcher.link(lambda _: stopping.set())
    stopping.wait()
    stopped = {c.pid for c in children if c.poll() is None}
    for c in children:
        if c.pid in stopped:
            c.send_signal(signal.SIGTERM)
    codes = []
    for c in children:
        try:
            code = c.wait(settings.drain_timeout + STOP_REQUESTS_S + 1)
        except subprocess.TimeoutExpired:
            c.kill()
            code = c.wait()
        # A child stopped by our SIGTERM before it had installed its handler
        # (still starting) held nothing: that is a clean stop, not a failure.
        codes.append(0 if c.pid in stopped and code == -signal.SIGTERM else code)
    if any(codes):
        log.error("web: children exited %s", codes)
        return 1
    return 0
