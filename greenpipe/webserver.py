"""web.py's body: the pooled gevent WSGI server, the dispatcher, and stopping.

Stock `gevent.pywsgi` writes a response's headers and body in two sends; on a
keep-alive connection Nagle's algorithm and the client's delayed ACK then stall
each request about 40 ms. `Server` sets TCP_NODELAY on every accepted socket,
sends headers and body in one write, and yields after each keep-alive request.
"""

from __future__ import annotations

import logging
import signal
import socket

import gevent
import gevent.event
from gevent.pool import Pool
from gevent.pywsgi import LoggingLogAdapter, WSGIHandler, WSGIServer

from greenpipe.app import create_app
from greenpipe.config import WebSettings
from greenpipe.dispatcher import Dispatcher
from greenpipe.errors import LinkError

log = logging.getLogger(__name__)
STOP_REQUESTS_S = 1.0  # time given to requests in progress when stopping


class _Handler(WSGIHandler):
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

    def handle(self, sock: socket.socket, address: object) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().handle(sock, address)


def make_server(
    app, host: str, port: int, max_connections: int, access_log: bool
) -> Server:
    """Bind (port 0: any free port) and start accepting."""
    server = Server(
        (host, port),
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
    try:
        server.start()
    except OSError as exc:
        raise LinkError(
            f"cannot listen on http://{host}:{port}: {exc}; is another web.py running? "
            "Stop it or pick another port (--port, 0 for any)"
        ) from None
    return server


def run(settings: WebSettings) -> int:
    """Serve HTTP and feed the workers until SIGTERM/SIGINT, then drain and exit 0."""
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
        app, settings.host, settings.port, settings.max_connections, settings.access_log
    )
    dispatcher.name = f"web http://{settings.host}:{server.server_port}"
    dispatcher.start()
    log.info(
        "web: serving http://%s:%d, feeding %d workers: %s",
        settings.host,
        server.server_port,
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
