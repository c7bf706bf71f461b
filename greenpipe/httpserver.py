"""The HTTP front door: a pooled gevent WSGI server that slow clients cannot jam.

Stock `gevent.pywsgi` writes a response's headers and body in two sends; on a
keep-alive connection Nagle's algorithm and the client's delayed ACK then stall
each request about 40 ms. `Server` sets TCP_NODELAY on every accepted socket,
sends headers and body in one write, and yields after each keep-alive request.
It also bounds each wait (header, body, idle), caps connections, refuses
ambiguous framing (`greenpipe.framing`) before any app code runs, and stops
without a plain 500 (`Server.stop`).
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections import Counter
from typing import Any

import gevent
import gevent.event
from gevent import GreenletExit
from gevent.pool import Pool
from gevent.pywsgi import (
    Input,
    LoggingLogAdapter,
    OldMessage,
    WSGIHandler,
    WSGIServer,
    _InvalidClientInput,
)
from werkzeug.exceptions import BadRequest, RequestTimeout

from greenpipe.errors import LinkError
from greenpipe.framing import Refused, check_fields, check_request_line, read_head
from greenpipe.throttle import Throttle
from greenpipe.turns import took_turn

log = logging.getLogger(__name__)


class BodyTimeout(RequestTimeout, OSError):
    """The request body did not arrive within BODY_TIMEOUT (a 408; the
    connection is closed). An OSError too, so a read that fails this way is
    handled where a reset connection is.
    """


def _canned(status: str, extra: str, error: str, detail: str) -> bytes:
    """A whole JSON error response (the connection closes after it)."""
    body = json.dumps({"error": error, "detail": detail}).encode() + b"\n"
    return (f"HTTP/1.1 {status}\r\nConnection: close\r\n{extra}Content-Type: "
            f"application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body  # fmt: skip


RESPONSE_408 = _canned("408 Request Timeout", "", "request timeout",
                       "the request line and headers did not arrive within "
                       "HEADER_TIMEOUT")  # fmt: skip
RESPONSE_503 = _canned("503 Service Unavailable", "Retry-After: 1\r\n", "unavailable",
                       "MAX_CONNECTIONS connections are open and none can give way; "
                       "retry in a second")  # fmt: skip
RESPONSE_STOPPING = _canned("503 Service Unavailable", "Retry-After: 1\r\n",
                            "unavailable", "this web process is stopping; retry "
                            "(on a new connection)")  # fmt: skip
OVERFLOW = 64  # connections past MAX_CONNECTIONS that get a quick answer
# Stopping: a connection answered this recently is between two requests of a
# busy client, not idle; it may send one more (answered, with Connection:
# close) before it is closed. Closing it at once would race its next request.
BETWEEN_REQUESTS_S = 0.25


class _Stopped(GreenletExit):
    """The stop window ended with this request still in the app: answer a 503."""


class _Cut(Exception):
    """A connection's deadline passed while it was waiting for a request."""


class _Handler(WSGIHandler):
    """pywsgi's handler with deadlines, eviction under pressure, one write.

    Waiting for a request (the line and headers of the first one, or the idle
    time between keep-alive requests) has a deadline, and a connection that
    is waiting can be evicted when MAX_CONNECTIONS are open: a slow or idle
    client gives way to a new one. The body has BODY_TIMEOUT from the end of
    the headers (`_Body`), and a body that is slow to come can be evicted too.
    """

    served = 0  # requests answered on this connection
    answered_at = 0.0  # time.monotonic() of the last answer
    version = (1, 1)  # the request line's, once checked
    evicted = False
    _timer: gevent.Timeout | None = None

    def log_request(self) -> None:
        # pywsgi formats the access-log line (a datetime, string work) even when
        # the log is off: skip it unless ACCESS_LOG is on.
        if self.server.access_log:
            super().log_request()

    def read_requestline(self) -> str:
        server = self.server
        kind = "idle" if self.served else "header"
        wait = server.idle_timeout if self.served else server.header_timeout
        if server.stopping and self.served:  # one more request, if it comes now
            kind = "stopping"
            wait = max(self.answered_at + BETWEEN_REQUESTS_S - time.monotonic(), 0.001)
        server.waiting[self] = kind
        self._timer = gevent.Timeout.start_new(wait, _Cut(kind))
        try:
            line = super().read_requestline()
            if line == "\r\n":  # RFC 9112 §2.2: ignore an empty line before a request
                line = super().read_requestline()
        except (_Cut, OSError) as exc:
            self._end_wait()
            if isinstance(exc, _Cut):
                server.cut[kind] += 1
            return ""  # closes the connection without an answer
        if self.served and line:  # the headers of a keep-alive request: their own
            self._timer.cancel()
            self._timer = gevent.Timeout.start_new(
                server.header_timeout, _Cut("header")
            )
        if not line:
            self._end_wait()
        return line

    def read_request(self, raw_requestline: str):
        # Refused (framing.py) for a head that a proxy could read another way;
        # pywsgi parses it only once the checks have passed.
        try:
            self.version = check_request_line(raw_requestline)
            done = super().read_request(raw_requestline)
        finally:
            self._end_wait()
        if self.evicted:  # the headers "ended" because we shut the socket
            raise _Cut("evicted")
        return done

    def start_response(self, status, headers, exc_info=None):
        # Stopping: the answer says Connection: close (pywsgi says it only to
        # HTTP/1.0 clients), so the client's next request opens a connection
        # that a process still listening accepts.
        if self.server.stopping and not self.close_connection:
            self.close_connection = True
            if self.request_version != "HTTP/1.0" and not any(
                name.lower() == "connection" for name, _ in headers
            ):
                headers = [*headers, ("Connection", "close")]
        return super().start_response(status, headers, exc_info)

    def MessageClass(self, fp, *args) -> OldMessage:  # noqa: N802 (pywsgi's name)
        """The request's fields, checked by framing.py, in pywsgi's header object.

        A head that passes the checks has one field per line, so the fields go
        in as they are: what email.parser (pywsgi's way) would make of them,
        without its cost (about 20 µs a request).
        """
        lines = read_head(fp.readline)
        if self.evicted:  # the head "ended" because we shut the socket
            raise _Cut("evicted")
        headers = OldMessage()
        for name, value in check_fields(self.version, lines):
            headers.set_raw(name, value)
        return headers

    def _end_wait(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.server.waiting.pop(self, None)

    def _handle_client_error(self, ex: Exception):
        if self.evicted:
            return None  # the socket is shut: nothing to answer on
        if isinstance(ex, _Cut):
            self.server.cut[ex.args[0]] += 1
            return ("408", RESPONSE_408)
        if isinstance(ex, Refused):
            self.server.cut[ex.kind] += 1
            self.log_error("(from %s) %s %s", self.client_address, ex.status, ex)
            return (str(ex.status), _canned(ex.status_line, "", ex.error, ex.detail))
        self.server.cut["malformed"] += 1
        super()._handle_client_error(ex)  # logs it
        detail = f"{ex}; send a well-formed HTTP/1.1 request"
        return ("400", _canned("400 Bad Request", "", "bad request", detail))

    def evict(self, why: str = "evicted", answer: bytes = b"") -> None:
        """Shut this waiting connection: its read ends as if the client left.

        `answer`, if given, is sent first (a whole response, Connection: close).
        """
        self.evicted = True
        self.server.waiting.pop(self, None)
        self.server.cut[why] += 1
        try:
            if answer:
                self.socket.sendall(answer)
            self.socket.shutdown(socket.SHUT_RDWR)
        except (OSError, AttributeError):
            pass

    def handle_error(self, t, v, tb) -> None:
        if issubclass(t, _Stopped):  # not gevent's plain-text 500
            self.close_connection = True
            if not self.headers_sent:
                self.server.cut["stopped"] += 1
                self._sendall(RESPONSE_STOPPING)
                self.response_length = len(RESPONSE_STOPPING)
                self.status = b"503 Service Unavailable"
            return
        super().handle_error(t, v, tb)

    def get_environ(self) -> dict:
        env = super().get_environ()
        if self.wsgi_input is not None and (
            self.content_length or env.get("HTTP_TRANSFER_ENCODING")
        ):
            self.wsgi_input.rfile = _Body(self.wsgi_input.rfile, self)
            if self.wsgi_input.chunked_input and env["wsgi.input"] is self.wsgi_input:
                env["wsgi.input"] = _Chunks(self.wsgi_input, self)
        return env

    def handle_one_request(self):
        result = super().handle_one_request()
        if result is True:
            self.served += 1
            self.answered_at = time.monotonic()
            # Keep-alive: when the next request is already buffered, pywsgi would
            # serve it without yielding, and a busy connection would starve the
            # dispatcher and the ack readers (and other connections) for as long
            # as its client keeps sending. Yield once per request, unless the
            # request already waited for the journal's group commit.
            if not took_turn():
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


class _Body:
    """The body's stream with one deadline: BODY_TIMEOUT from the end of headers.

    A client sending its body a byte at a time, or stopping half way, gets a
    408 (`BodyTimeout`) and its connection is closed.
    """

    def __init__(self, rfile, handler: _Handler) -> None:
        self._rfile = rfile
        self._handler = handler
        self._deadline = time.monotonic() + handler.server.body_timeout

    def _call(self, read, *args):
        left = self._deadline - time.monotonic()
        handler = self._handler
        waiting = handler.server.waiting
        waiting[handler] = "body"  # evictable while it waits for the client
        try:
            with gevent.Timeout(max(left, 0.001), _Cut("body")):
                data = read(*args)
            if handler.evicted:  # cut short by the shutdown: not the client's end
                raise _Cut("evicted")
            return data
        except _Cut as exc:
            handler.close_connection = True
            if exc.args[0] == "body":
                handler.server.cut["body"] += 1
            raise BodyTimeout(
                f"the request body did not arrive within BODY_TIMEOUT "
                f"({handler.server.body_timeout:g} s); send it faster, or raise "
                "GREENPIPE_BODY_TIMEOUT"
            ) from None
        finally:
            waiting.pop(handler, None)

    def read(self, *args):
        return self._call(self._rfile.read, *args)

    def readline(self, *args):
        return self._call(self._rfile.readline, *args)


class BrokenBody(BadRequest, OSError):
    """A chunked body that does not parse: a 400 from any Flask view reading it.

    An OSError too, so code that reads the body and handles a reset connection
    (web.py's forwarding views) handles this the same way.
    """


class _Chunks:
    """A chunked body's WSGI input: a chunk that does not parse is a 400, not a 500.

    pywsgi raises an IOError for it, which a view reading the body with Flask's
    `request.get_data()` would turn into a 500; the connection is closed
    either way (where the next request starts is unknown).
    """

    def __init__(self, wsgi_input: Input, handler: _Handler) -> None:
        self._input = wsgi_input
        self._handler = handler

    def _call(self, read, *args):
        try:
            return read(*args)
        except _InvalidClientInput as exc:
            self._handler.close_connection = True
            raise BrokenBody(
                f"the chunked body does not parse ({exc}); send each chunk as its "
                "size in hex, CRLF, the data, CRLF (RFC 9112 §7.1)"
            ) from None

    def read(self, *args):
        return self._call(self._input.read, *args)

    def readline(self, *args):
        return self._call(self._input.readline, *args)

    def readlines(self, *args):
        return self._call(self._input.readlines, *args)

    def __iter__(self):
        return iter(self.readline, b"")


class _QuietLog:
    """pywsgi's error log, at most one line a second: bad clients can't flood it.

    The next line after a quiet spell says how many were left out; the counts
    by kind are in /stats ("http": "cut").
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._throttle = Throttle(logger, interval=1.0)

    def write(self, message: str) -> None:
        self._throttle.warning("http", "%s", message.rstrip())

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        return None


class Server(WSGIServer):
    """A pooled WSGIServer: TCP_NODELAY, one write per response, a front door.

    At most `max_connections` are served; past that, the connection that has
    waited longest for a request is evicted to make room, and if none is
    waiting the new one gets a quick 503 (never a hang in the backlog while
    the pool has room for the answer).
    """

    handler_class = _Handler
    access_log = False
    max_connections = 1000
    header_timeout = 10.0
    idle_timeout = 30.0
    body_timeout = 30.0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.active = 0
        self.waiting: dict[_Handler, str] = {}  # oldest wait first: its kind
        self.stopping = False
        self.cut: Counter[str] = Counter()  # header, idle, body, evicted, refused

    def report(self) -> dict:
        """The front door's figures, for /stats."""
        return {"connections": self.active, "max_connections": self.max_connections,
                "waiting": len(self.waiting), "cut": dict(self.cut)}  # fmt: skip

    def handle(self, sock: socket.socket, address: object) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.active >= self.max_connections:
            if self.waiting:
                next(iter(self.waiting)).evict()
            else:
                self.cut["refused"] += 1
                try:
                    sock.sendall(RESPONSE_503)
                except OSError:
                    pass
                sock.close()
                return
        self.active += 1
        try:
            super().handle(sock, address)
        finally:
            self.active -= 1

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting, answer what is under way, close; `timeout`: seconds.

        Every request already read, or arriving on an open connection within
        BETWEEN_REQUESTS_S of its last answer, is answered normally (jobs are
        still taken: the pipe drains after this), with ``Connection: close``.
        A connection idle for longer is closed at once. Past `timeout`, a
        connection still sending its request gets a JSON 503 with
        Retry-After, and a request still in the app is interrupted into the
        same 503 (never gevent's plain-text 500): the only case where a
        client may get a 503 for a job that is then handled.
        """
        timeout = self.stop_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        self.stopping = True
        self._take_queued()
        self.close()  # the listening socket: new connections go elsewhere
        now = time.monotonic()
        for handler, kind in list(self.waiting.items()):
            if kind == "idle":  # waiting since before the stop (a long wait)
                quiet = now - handler.answered_at
                gevent.spawn_later(max(BETWEEN_REQUESTS_S - quiet, 0),
                                   _close_if_idle, handler)  # fmt: skip
        if self.pool is not None:
            self.pool.join(timeout=max(deadline - time.monotonic(), 0))
            for handler, kind in list(self.waiting.items()):  # sending a request
                handler.evict("stopped", RESPONSE_STOPPING if kind != "idle" else b"")
            self.pool.join(timeout=0.1)  # the evicted connections close
            self.pool.kill(_Stopped, block=True, timeout=1)  # into RESPONSE_STOPPING
        log.info(
            "http: stopped; %d idle connections closed, %d requests answered 503 "
            "(stopping)", self.cut["stopping"], self.cut["stopped"],
        )  # fmt: skip

    def _take_queued(self) -> None:
        # Connections the kernel has queued on the listening socket would be
        # reset by its close: take them first (each gets one answer).
        while not self.full():
            try:
                args = self.do_read()
            except OSError:
                return
            if not args:
                return
            self.do_handle(*args)


def _close_if_idle(handler: _Handler) -> None:
    if handler.server.waiting.get(handler) == "idle":
        handler.evict("stopping")


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
    own_port: bool = False,
    timeouts: tuple[float, float, float] | None = None,
    sock: Any = None,
) -> Server:
    """Bind (port 0: any free port) and start accepting.

    `own_port`: this process's ops port (OPS_PORT), which only it serves;
    requests on it carry ``environ["greenpipe.own_port"]``. `timeouts`:
    (HEADER_TIMEOUT, IDLE_TIMEOUT, BODY_TIMEOUT) in seconds. `sock`: a
    listening socket to serve instead of binding one (gunicorn's).
    """
    server = Server(
        sock if sock is not None else listener(host, port, reuse_port),
        app,
        # Only a pooled server drains on stop(timeout); OVERFLOW slots answer
        # (or make room for) the connections past MAX_CONNECTIONS.
        spawn=Pool(max_connections + OVERFLOW),
        log=LoggingLogAdapter(logging.getLogger("greenpipe.access"))
        if access_log
        else None,
        error_log=_QuietLog(logging.getLogger("greenpipe.http")),
        # SERVER_NAME: skip a reverse DNS lookup at start.
        environ={"SERVER_NAME": host, "greenpipe.own_port": own_port},
    )
    server.access_log = access_log
    server.max_connections = max_connections
    server.environ["greenpipe.http"] = server  # /stats reports the front door
    if timeouts is not None:
        server.header_timeout, server.idle_timeout, server.body_timeout = timeouts
    server.start()
    return server
