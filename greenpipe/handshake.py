"""Why a ZMTP or CURVE handshake with a worker failed, in words an operator can act on.

libzmq's monitor reports a failed handshake as an event and a value; this
module names the monitor events watched and turns one into advice.
"""

from __future__ import annotations

import zmq.green as zmq

# A CURVE handshake refused by the worker's allowlist, or failed on a wrong key.
HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
# What a link's monitor socket reports.
MONITORED = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | HANDSHAKE_FAILED
_REFUSED = (
    "the worker refused this web's key: add this web's NAME.key to the worker's "
    "CURVE_ALLOW directory"
)
# Why a handshake failed, as far as libzmq's monitor events tell (the event, its
# value, and whether this web has CURVE on). A wrong CURVE_SERVER key and a peer
# that is not ZeroMQ at all both end in HANDSHAKE_FAILED_NO_DETAIL.
_WRONG_KEY = (
    "the CURVE handshake failed: is CURVE_SERVER the worker's public key (compare "
    "its fingerprint with the one the worker logs at start)? If it is, what "
    "listens there is not a greenpipe worker"
)
_NOT_ZEROMQ = (
    "what listens there does not speak ZeroMQ (the ZMTP greeting failed): is it "
    "a worker's port, and not a web's HTTP port or another service?"
)
_WORKER_HAS_CURVE = (
    "the worker has CURVE on and this web has it off: set CURVE_SECRET and "
    "CURVE_SERVER for this web (python -m greenpipe keys)"
)
_WEB_HAS_CURVE = (
    "this web has CURVE on and the worker has it off: start the worker with "
    "CURVE_SECRET and CURVE_ALLOW, or unset this web's CURVE_SECRET"
)


_PROTOCOL_ERRORS = {getattr(zmq, name): name for name in dir(zmq)
                    if name.startswith("PROTOCOL_ERROR_")}  # fmt: skip


def handshake_failure(event: int, value: int, curve: bool) -> str:
    """Why a handshake failed, from a monitor event and its value, in words."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return _REFUSED
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            return _WEB_HAS_CURVE if curve else _WORKER_HAS_CURVE
        if value == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
            return _WRONG_KEY
        name = _PROTOCOL_ERRORS.get(value, hex(value))
        return (
            f"the ZeroMQ handshake failed ({name}): is it a greenpipe worker, "
            "running the same greenpipe as this web?"
        )
    return _WRONG_KEY if curve else _NOT_ZEROMQ
