"""A link's socket, its monitor, and the reader greenlets that wait on them.

One reader greenlet waits on each socket (zmq.green allows one waiter per
socket, pyzmq#1154); it keeps what it reads in `unread`, in order, and posts
the link that owns the connection to the shared `Inbox`. Nothing read is
applied here: the link does that in the dispatcher greenlet.
"""

from __future__ import annotations

import itertools
import struct
from collections import deque
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import gevent
import zmq.green as zmq

from greenpipe.curve import Keypair
from greenpipe.errors import LinkError
from greenpipe.handshake import MONITORED
from greenpipe.inbox import Inbox, Unread

if TYPE_CHECKING:
    from greenpipe.link import Link

_ids = itertools.count(1)
_EVENT = struct.Struct("=Hi")  # a monitor event's first frame: event id, value


def monitor_event(frames: list[bytes]) -> tuple[int, int]:
    """(event, value) of one monitor message: libzmq's first frame, 16-bit
    event and 32-bit value; the second, the endpoint, is not needed here.
    (pyzmq's `zmq.utils.monitor` does the same, but imports asyncio: 20 ms
    of every web's start.)"""
    if len(frames) != 2 or len(frames[0]) != _EVENT.size:
        raise LinkError(f"a monitor message of an unknown format: {frames!r}")
    event, value = _EVENT.unpack(frames[0])
    return event, value


class Connection:
    """One connection to a worker: opened, read and closed for its link."""

    __slots__ = ("name", "unread", "_inbox", "_link", "_sock", "_monitor", "_readers")

    def __init__(self, name: str, inbox: Inbox, link: Link) -> None:
        self.name = name  # the worker, for errors
        self.unread: deque[Unread] = deque()  # read, not yet applied, in order
        self._inbox = inbox
        self._link = link  # what the readers post: the link holds `unread`
        self._sock: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None
        self._readers: list[gevent.Greenlet] = []

    def open(
        self,
        sock: zmq.Socket,
        address: str,
        curve: tuple[Keypair, bytes] | None,
        acknowledged: bool,
    ) -> None:
        """Connect `sock` to `address` with a monitor, and start the readers.

        Only an `acknowledged` connection has a reader for messages (a PUSH
        socket receives none). Raises LinkError if it cannot connect.
        """
        if curve is not None:
            keys, server = curve
            sock.curve_secretkey = keys.secret
            sock.curve_publickey = keys.public
            sock.curve_serverkey = server
        # A closed link's unsent jobs are re-sent elsewhere: drop them at once.
        sock.setsockopt(zmq.LINGER, 0)
        # ms; a restarted worker is back in well under a second.
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 500)
        # ms; a SYN lost on a cut network is not retried for seconds by the
        # kernel: give up on it and reconnect, so a healed link is back fast.
        sock.setsockopt(zmq.CONNECT_TIMEOUT, 1000)
        monitor = sock.get_monitor_socket(
            MONITORED, f"inproc://greenpipe-monitor-{next(_ids)}"
        )
        try:
            sock.connect(address)
        except zmq.ZMQError as exc:
            monitor.close(0)
            sock.close(0)
            raise LinkError(
                f"cannot connect to worker {self.name}: {exc}; check WORKERS"
            ) from exc
        self._sock, self._monitor = sock, monitor
        self._readers = [gevent.spawn(self._watch, monitor, sock)]
        if acknowledged:
            self._readers.append(gevent.spawn(self._read, sock))

    def close(self) -> None:
        """Close both sockets now (unsent messages are dropped); readers exit."""
        sock, monitor = self._sock, self._monitor
        self._sock = self._monitor = None
        readers, self._readers = self._readers, []
        self.unread.clear()  # the closed connection's: as the socket's unread
        current = gevent.getcurrent()
        for reader in readers:
            if reader is not current:
                reader.kill(block=False)
        if sock is not None:
            try:
                sock.disable_monitor()
            except zmq.ZMQError:
                pass
            assert monitor is not None
            monitor.close(0)
            sock.close(0)

    def send(self, frames: Sequence[bytes]) -> bool:
        """Queue one message without waiting. False if it cannot go now.

        Raises LinkError if the socket fails for a reason other than "full".
        """
        sock = self._sock
        if sock is None:
            return False
        try:
            sock.send_multipart(frames, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:
            raise LinkError(f"sending to worker {self.name} failed: {exc}") from exc
        return True

    def queued(self) -> Iterator[list[bytes]]:
        """The messages the socket holds now, one at a time, without waiting.

        Stops if the connection is closed or replaced meanwhile.
        """
        sock = self._sock
        while sock is not None and sock is self._sock:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError:
                break
            yield frames

    def _read(self, sock: zmq.Socket) -> None:
        count = 0
        while sock is self._sock:
            try:
                frames = sock.recv_multipart()
            except zmq.ZMQError:
                return  # closed under us: reset() or close()
            if sock is not self._sock:
                return
            self.unread.append(frames)
            self._inbox.post(self._link)
            count += 1
            if count % 64 == 0:
                gevent.sleep(0)  # a busy link must not starve the HTTP greenlets

    def _watch(self, monitor: zmq.Socket, sock: zmq.Socket) -> None:
        while sock is self._sock:
            try:
                frames = monitor.recv_multipart()
            except zmq.ZMQError:
                return
            if sock is not self._sock:
                return
            self.unread.append(monitor_event(frames))
            self._inbox.post(self._link)
