"""Messages that send the user the right way (issue 23, finding 4).

A handshake that fails says which of three things happened, as far as libzmq's
monitor events tell: the peer does not speak ZeroMQ (a web's own HTTP port),
one side has CURVE and the other not, or the CURVE key is wrong. A web waiting
for its barrier says which workers it waits for and what to run.
"""

from __future__ import annotations

import pytest
import zmq

from greenpipe.link import handshake_failure
from tests.support import free_port, poll_until

FAILED_PROTOCOL = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
NO_DETAIL = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
MISMATCH = zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH


@pytest.mark.parametrize(
    ("event", "value", "curve", "says"),
    [
        (NO_DETAIL, 0, False, "does not speak ZeroMQ (the ZMTP greeting failed)"),
        (NO_DETAIL, 0, True, "is CURVE_SERVER the worker's public key"),
        (FAILED_PROTOCOL, MISMATCH, False, "the worker has CURVE on and this web has it off"),
        (FAILED_PROTOCOL, MISMATCH, True, "this web has CURVE on and the worker has it off"),
        (FAILED_PROTOCOL, zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC, True, "CURVE_SERVER"),
        (FAILED_PROTOCOL, zmq.PROTOCOL_ERROR_ZMTP_UNEXPECTED_COMMAND, False,
         "PROTOCOL_ERROR_ZMTP_UNEXPECTED_COMMAND"),
        (zmq.EVENT_HANDSHAKE_FAILED_AUTH, 400, True, "refused this web's key"),
    ],
)  # fmt: skip
def test_each_handshake_failure_says_what_happened(event, value, curve, says):
    assert says in handshake_failure(event, value, curve)


def test_a_web_pointed_at_an_http_port_says_it_is_not_zeromq(start_web):
    port = free_port()  # the web's own HTTP port, given as its worker
    web = start_web([f"127.0.0.1:{port}"], wait_barrier=False, port=port,
                    ready_timeout=1)  # fmt: skip

    def why() -> str:
        code, _, body = web.get("/healthz")
        return "" if code == 200 else str(body["not_ready"])

    text = "does not speak ZeroMQ"
    poll_until(why, lambda s: text in s, 10, f"/healthz saying {text!r}")
    web.proc.expect(text)
    assert "CURVE" not in why(), why()


def test_a_web_waiting_for_a_missing_worker_says_so_while_it_waits(start_web):
    port = free_port()  # nothing listens there: a typo'd worker port
    web = start_web([f"127.0.0.1:{port}"], wait_barrier=False, heartbeat=0.2,
                    heartbeat_timeout=1)  # fmt: skip
    line = web.proc.expect(r"barrier: waited \d+ s for 1 of 1 worker: .*", timeout=8)
    assert f"tcp://127.0.0.1:{port} (no connection" in line[0], line[0]
    assert f"greenpipe worker --port {port}" in line[0], line[0]
    web.proc.expect(r"feeding 1 worker(?!s)")
