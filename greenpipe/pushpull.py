"""Plain PUSH/PULL under gevent, with a readiness barrier: the pipeline blocks.

At most once, no acknowledgements (for that, see web.py and server.py); what
this adds to raw zmq.green sockets is the barrier that replaces the classic
``sleep 1`` before the first push, a puller that is a real stream, and
sockets that close themselves::

    from greenpipe.pushpull import Pusher, Puller

    with Pusher("tcp://127.0.0.1:5557", bind=True) as pusher:
        pusher.wait_for_peers(3, timeout=10)    # all three workers connected
        for n in range(1, 101):
            pusher.send_json(n)                 # round-robin from the first message

    with Puller("tcp://127.0.0.1:5557") as puller:
        for message in puller:                  # bytes; puller.json(message) to decode
            handle(message)
            puller.pause()                      # stop taking messages ...
            gevent.spawn_later(0.02, puller.resume)   # ... and go on 20 ms later

Waiting blocks only the calling greenlet. `pause()` stops the stream: a
message that arrived while paused is held (at most one) and delivered first
after `resume()`, never dropped. Iteration ends when the puller is closed.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from typing import Any

import gevent
import gevent.event
import gevent.lock
import zmq.green as zmq
from zmq.utils.monitor import recv_monitor_message

from greenpipe.errors import LinkError

_ids = itertools.count(1)


class _Closed(Exception):
    """The puller was closed: iteration ends, recv() raises LinkError."""


def _endpoints(endpoints: str | Sequence[str]) -> list[str]:
    items = [endpoints] if isinstance(endpoints, str) else list(endpoints)
    if not items:
        raise ValueError("give at least one endpoint, e.g. tcp://127.0.0.1:5557")
    return items


class _Socket:
    """One socket that binds or connects to endpoints and closes on exit."""

    kind = zmq.PUSH

    def __init__(
        self,
        endpoints: str | Sequence[str],
        bind: bool = False,
        hwm: int = 1000,
        context: zmq.Context | None = None,
    ) -> None:
        self._context = context or zmq.Context.instance()
        self.socket = self._context.socket(self.kind)
        self.socket.setsockopt(
            zmq.LINGER, 2000
        )  # ms: flush what was sent, then give up
        self.socket.setsockopt(zmq.SNDHWM, hwm)
        self.socket.setsockopt(zmq.RCVHWM, hwm)
        self._setup()
        self.endpoints: list[str] = []
        try:
            for endpoint in _endpoints(endpoints):
                if bind:
                    self.socket.bind(endpoint)
                    self.endpoints.append(
                        self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
                    )
                else:
                    self.socket.connect(endpoint)
                    self.endpoints.append(endpoint)
        except zmq.ZMQError as exc:
            self.close(0)
            verb = "bind" if bind else "connect to"
            raise LinkError(f"cannot {verb} {endpoint}: {exc}") from None

    def _setup(self) -> None:
        pass

    @property
    def endpoint(self) -> str:
        """The first endpoint, resolved (a bound port 0 or * shows the real port)."""
        return self.endpoints[0]

    @property
    def closed(self) -> bool:
        return self.socket.closed

    def close(self, linger: int | None = None) -> None:
        if not self.socket.closed:
            self.socket.close(linger)

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Pusher(_Socket):
    """A PUSH socket with a readiness barrier: `wait_for_peers` before sending.

    Connecting sockets use IMMEDIATE, so nothing is queued for a peer whose
    connection is not complete and no message goes to "whoever came first".
    """

    kind = zmq.PUSH

    def _setup(self) -> None:
        self.socket.setsockopt(zmq.IMMEDIATE, 1)
        self._peers = 0
        self._changed = gevent.event.Event()
        # zmq.green lets one greenlet wait for a full socket to drain; the
        # others queue here instead of failing ("Only one greenlet can be
        # waiting on this event").
        self._sending = gevent.lock.Semaphore()
        monitor = self.socket.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED,
            f"inproc://greenpipe-pusher-{next(_ids)}",
        )
        self._monitor = monitor
        self._watcher = gevent.spawn(self._watch, monitor)

    def _watch(self, monitor: zmq.Socket) -> None:
        while True:
            try:
                event = recv_monitor_message(monitor)["event"]
            except zmq.ZMQError:
                return
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._peers += 1
            elif event == zmq.EVENT_DISCONNECTED:
                self._peers = max(0, self._peers - 1)
            self._changed.set()

    @property
    def peers(self) -> int:
        """Peers whose ZeroMQ handshake completed and that are still connected."""
        return self._peers

    def wait_for_peers(self, count: int, timeout: float) -> None:
        """Block this greenlet until `count` peers are connected, or raise LinkError."""
        with gevent.Timeout(timeout, False):
            while self._peers < count:
                self._changed.clear()
                self._changed.wait()
            return
        raise LinkError(
            f"{self._peers} of {count} peers connected to {', '.join(self.endpoints)} "
            f"after {timeout:g} s; are they running and pointed here?"
        )

    def send(self, data: bytes | Sequence[bytes]) -> None:
        """Send one message (bytes, or a list of frames); waits while HWM is full.

        Any number of greenlets may send at once: past the high-water mark
        they wait in turn, in the order they came.
        """
        with self._sending:
            if isinstance(data, bytes | bytearray | memoryview):
                self.socket.send(data)
            else:
                self.socket.send_multipart(data)

    def send_json(self, obj: Any) -> None:
        self.send(json.dumps(obj).encode())

    def close(self, linger: int | None = None) -> None:
        if not self.socket.closed:
            try:
                self.socket.disable_monitor()
            except zmq.ZMQError:
                pass
            self._monitor.close(0)
            self._watcher.kill(block=False)
        super().close(linger)


class Puller(_Socket):
    """A PULL socket as a stream: iterate it, pause and resume it, close it."""

    kind = zmq.PULL

    def _setup(self) -> None:
        self._running = gevent.event.Event()
        self._running.set()
        self._held: list[bytes] | bytes | None = None

    def pause(self) -> None:
        """Take no more messages until `resume` (one already arriving is held)."""
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def recv(self) -> bytes:
        """The next message (one frame); waits while paused or while none came.

        Raises LinkError once the puller is closed.
        """
        return self._get(multipart=False)  # type: ignore[return-value]

    def recv_multipart(self) -> list[bytes]:
        return self._get(multipart=True)  # type: ignore[return-value]

    def _get(self, multipart: bool) -> list[bytes] | bytes:
        try:
            return self._next(multipart)
        except _Closed:
            raise LinkError(
                f"puller on {', '.join(self.endpoints)} is closed"
            ) from None

    def recv_json(self) -> Any:
        return json.loads(self.recv())

    @staticmethod
    def json(message: bytes) -> Any:
        return json.loads(message)

    def _next(self, multipart: bool) -> list[bytes] | bytes:
        while True:
            self._running.wait()
            if self.socket.closed:
                raise _Closed
            if self._held is not None:
                message, self._held = self._held, None
                return message
            try:
                message = (
                    self.socket.recv_multipart() if multipart else self.socket.recv()
                )
            except zmq.ZMQError:
                raise _Closed from None  # closed while waiting
            if self._running.is_set():
                return message
            self._held = message  # paused while it arrived: keep it for resume()

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        try:
            return self._next(multipart=False)  # type: ignore[return-value]
        except _Closed:
            raise StopIteration from None

    def close(self, linger: int | None = None) -> None:
        super().close(linger)
        self._running.set()  # wake a paused iterator so it can end
