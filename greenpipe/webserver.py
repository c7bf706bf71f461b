"""web.py's body: the pooled gevent WSGI server, the dispatcher, and stopping.

Stock `gevent.pywsgi` writes a response's headers and body in two sends; on a
keep-alive connection Nagle's algorithm and the client's delayed ACK then stall
each request about 40 ms. `Server` sets TCP_NODELAY on every accepted socket,
sends headers and body in one write, and yields after each keep-alive request.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from dataclasses import replace

import gevent
import gevent.event
from gevent.pool import Pool
from gevent.pywsgi import LoggingLogAdapter, WSGIHandler, WSGIServer

from greenpipe.app import create_app
from greenpipe.config import WebSettings, to_flags
from greenpipe.dispatcher import Dispatcher
from greenpipe.errors import LinkError

log = logging.getLogger(__name__)
STOP_REQUESTS_S = 1.0  # time given to requests in progress when stopping


class _Handler(WSGIHandler):
    def log_request(self) -> None:
        # pywsgi formats the access-log line (a datetime, string work) even when
        # the log is off: skip it unless ACCESS_LOG is on.
        if self.server.access_log:
            super().log_request()

    def handle_one_request(self):
        result = super().handle_one_request()
        if result is True:
            # Keep-alive: when the next request is already buffered, pywsgi would
            # serve it without yielding, and a busy connection would starve the
            # dispatcher and the ack readers (and other connections) for as long
            # as its client keeps sending. Yield once per request.
            gevent.sleep(0)
        return result

    def _write_with_headers(self, data: bytes) -> None:
        # One send for the status line, headers and (non-chunked) body.
        if self.response_use_chunked or not data:
            return super()._write_with_headers(data)
        self.headers_sent = True
        self.finalize_headers()
        towrite = bytearray(b"HTTP/1.1 ")
        towrite += self.status
        towrite += b"\r\n"
        for header, value in self.response_headers:
            towrite += header + b": " + value + b"\r\n"
        towrite += b"\r\n"
        towrite += data
        self._sendall(towrite)


class Server(WSGIServer):
    """A pooled WSGIServer with TCP_NODELAY and single-write responses."""

    handler_class = _Handler
    access_log = False

    def handle(self, sock: socket.socket, address: object) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().handle(sock, address)


def listener(host: str, port: int, reuse_port: bool) -> socket.socket:
    """A listening socket; with `reuse_port`, one of several sharing the port.

    SO_REUSEPORT lets several web.py processes bind the same port; the kernel
    spreads new connections over them (one core each).
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise LinkError(
            f"cannot listen on http://{host}:{port}: {exc}; is another web.py running? "
            "Stop it or pick another port (--port, 0 for any)"
        ) from None
    return sock


def make_server(
    app,
    host: str,
    port: int,
    max_connections: int,
    access_log: bool,
    reuse_port: bool = False,
) -> Server:
    """Bind (port 0: any free port) and start accepting."""
    server = Server(
        listener(host, port, reuse_port),
        app,
        spawn=Pool(max_connections),  # only a pooled server drains on stop(timeout)
        log=LoggingLogAdapter(logging.getLogger("greenpipe.access"))
        if access_log
        else None,
        error_log=LoggingLogAdapter(
            logging.getLogger("greenpipe.http"), logging.WARNING
        ),
        environ={"SERVER_NAME": host},  # skip a reverse DNS lookup at start
    )
    server.access_log = access_log
    server.start()
    return server


def run(settings: WebSettings) -> int:
    """Serve HTTP and feed the workers until SIGTERM/SIGINT, then drain and exit 0."""
    if settings.web_processes > 1:
        return supervise(settings)
    stopping = gevent.event.Event()

    def on_signal() -> None:
        if stopping.is_set():
            log.warning("web: second signal; exiting now")
            raise SystemExit(1)
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, on_signal)

    dispatcher = Dispatcher(settings)
    app = create_app(dispatcher, settings)
    server = make_server(
        app,
        settings.host,
        settings.port,
        settings.max_connections,
        settings.access_log,
        settings.reuse_port,
    )
    dispatcher.name = (
        f"web http://{settings.host}:{server.server_port} pid {os.getpid()}"
    )
    dispatcher.start()
    log.info(
        "web: serving http://%s:%d (pid %d), feeding %d workers: %s",
        settings.host,
        server.server_port,
        os.getpid(),
        len(dispatcher.links),
        ", ".join(link.name for link in dispatcher.links),
    )
    stopping.wait()
    log.info("web: stopping; finishing requests, then waiting for acknowledgements")
    server.stop(timeout=STOP_REQUESTS_S)
    left = dispatcher.drain(settings.drain_timeout)
    if left:
        log.warning(
            "web: %d jobs unacknowledged after DRAIN_TIMEOUT %g s; written to %s",
            left,
            settings.drain_timeout,
            settings.dead_letter,
        )
    stats = dispatcher.stats()
    dispatcher.close()
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
    script = os.path.join(os.path.dirname(os.path.dirname(__file__)), "web.py")
    argv = [sys.executable, script, *to_flags(child)]
    children = [subprocess.Popen(argv) for _ in range(settings.web_processes)]
    reserve.close()  # bound to the port until the children had bound it too
    log.info(
        "web: %d processes sharing http://%s:%d (pids %s)",
        len(children), settings.host, port, ", ".join(str(c.pid) for c in children),
    )  # fmt: skip
    stopping = gevent.event.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stopping.set)
    watchers = [gevent.spawn(c.wait) for c in children]
    for watcher in watchers:
        watcher.link(lambda _: stopping.set())
    stopping.wait()
    for c in children:
        if c.poll() is None:
            c.send_signal(signal.SIGTERM)
    codes = []
    for c in children:
        try:
            codes.append(c.wait(settings.drain_timeout + STOP_REQUESTS_S + 1))
        except subprocess.TimeoutExpired:
            c.kill()
            codes.append(c.wait())
    if any(codes):
        log.error("web: children exited %s", codes)
        return 1
    return 0
