"""greenpipe/connection.py: a link's socket, its monitor and their readers."""

from __future__ import annotations

import struct

import pytest
import zmq

from greenpipe.connection import monitor_event
from greenpipe.errors import LinkError

pytestmark = pytest.mark.inprocess  # make test-fast


def test_a_monitor_message_is_read_as_libzmq_writes_it():
    for event, value in ((zmq.EVENT_DISCONNECTED, 7), (zmq.EVENT_HANDSHAKE_FAILED_AUTH, 400),
                         (zmq.EVENT_HANDSHAKE_SUCCEEDED, 0)):  # fmt: skip
        frames = [struct.pack("=Hi", event, value), b"tcp://127.0.0.1:4444"]
        assert monitor_event(frames) == (event, value)


def test_a_real_monitor_socket_agrees():
    """The same two frames from libzmq itself (a connect to a closed port)."""
    context = zmq.Context()
    try:
        sock = context.socket(zmq.DEALER)
        monitor = sock.get_monitor_socket(zmq.EVENT_CONNECT_DELAYED,
                                          "inproc://test-connection-monitor")  # fmt: skip
        sock.connect("tcp://127.0.0.1:1")  # nobody listens: connect delayed
        assert monitor.poll(5000), "no monitor event within 5 s of a connect"
        event, _ = monitor_event(monitor.recv_multipart())
        assert event == zmq.EVENT_CONNECT_DELAYED
        sock.disable_monitor()
        monitor.close(0)
        sock.close(0)
    finally:
        context.term()


def test_a_message_of_another_format_is_named():
    with pytest.raises(LinkError, match="unknown format"):
        monitor_event([b"\x01\x00", b"tcp://x"])
