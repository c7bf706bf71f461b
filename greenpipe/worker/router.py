"""The worker's ROUTER socket: bound on its port, CURVE set before the bind.

One socket serves every web that connects; sends never wait (a full queue is
the caller's business); `close` lingers so the last acknowledgements leave.
"""

from __future__ import annotations

import logging

import zmq.green as zmq

from greenpipe.config import WorkerSettings
from greenpipe.curve import (
    DOMAIN,
    Allowlist,
    Keypair,
    fingerprint,
    load_allowlist,
    load_secret,
)
from greenpipe.errors import LinkError
from greenpipe.values import loopback

log = logging.getLogger("greenpipe.worker")  # one logger for the package's lines


class Router:
    """The ROUTER, and CURVE's ZAP allowlist when CURVE_SECRET is set."""

    def __init__(self, settings: WorkerSettings, context: zmq.Context) -> None:
        self.settings = settings
        self.endpoint = ""
        self._context = context
        self._sock: zmq.Socket | None = None
        self._keys: Keypair | None = None
        self._allow: Allowlist | None = None  # CURVE's ZAP handler, when on

    @property
    def bound(self) -> bool:
        return self._sock is not None

    def bind(self) -> str:
        """Bind; returns the resolved endpoint (the real port for port 0).

        Raises LinkError naming the address when the port is taken.
        """
        keys = self._keys = self._curve()
        sock = self._context.socket(zmq.ROUTER)
        if keys is not None:  # before bind: no plain-text moment
            sock.curve_secretkey = keys.secret
            sock.curve_publickey = keys.public
            sock.curve_server = True
            sock.zap_domain = DOMAIN
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a vanished web raises, not drops
        sock.setsockopt(zmq.MAXMSGSIZE, self.settings.max_frame)
        sock.setsockopt(zmq.HANDSHAKE_IVL, 3_000)  # half-open junk connections go away
        sock.setsockopt(zmq.SNDHWM, 10_000)
        sock.setsockopt(zmq.RCVHWM, 10_000)
        address = f"tcp://{self.settings.host}:{self.settings.port or '*'}"
        try:
            sock.bind(address)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise LinkError(
                f"cannot bind {address}: {exc}; is another worker (greenpipe "
                f"worker, server.py) or program on port {self.settings.port}? "
                "Stop it or pick another port (--port, 0 for any)"
            ) from None
        self._sock = sock
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        return self.endpoint

    def announce(self, name: str) -> None:
        """Log how the port is guarded: CURVE's keys, or a warning beyond loopback."""
        if self._keys is not None and self._allow is not None:
            log.info(
                "%s: CURVE on: server key %s, %d web keys allowed from %s",
                name, fingerprint(self._keys.public),
                len(self._allow.allowed), self.settings.curve_allow,
            )  # fmt: skip
        elif not loopback(self.settings.host):
            log.warning(
                "%s: listening on %s beyond loopback without CURVE: anyone who can "
                "reach this port can send jobs and read them on the wire; set "
                "CURVE_SECRET and CURVE_ALLOW (python -m greenpipe keys)",
                name,
                self.endpoint,
            )

    def _curve(self) -> Keypair | None:
        """Load the keys and start the ZAP handler, if CURVE_SECRET is set."""
        settings = self.settings
        if not settings.curve_secret:
            return None
        keys = load_secret(settings.curve_secret, "CURVE_SECRET")
        allowed = load_allowlist(settings.curve_allow, "CURVE_ALLOW")
        self._allow = Allowlist(self._context, allowed, settings.curve_allow)
        return keys

    @property
    def refused(self) -> int:
        """Handshakes the allowlist refused (0 without CURVE)."""
        return self._allow.refused if self._allow is not None else 0

    def receive(self) -> list[bytes] | None:
        """The next message (routing id first); None once the socket is closed."""
        sock = self._sock
        if sock is None or sock.closed:
            return None
        try:
            return sock.recv_multipart()
        except zmq.ZMQError:
            return None  # closed while draining

    def send(self, ident: bytes, frames: list[bytes]) -> bool | None:
        """Send to one web without waiting.

        True: sent. False: its queue is full, or the socket closed. None: that
        connection is gone (EHOSTUNREACH); forget the web.
        """
        sock = self._sock
        if sock is None:
            return False
        try:
            sock.send_multipart([ident, *frames], zmq.NOBLOCK)
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:  # that connection is gone
                return None
            raise
        return True

    def close(self, linger: float) -> None:
        """Close the ROUTER, lingering `linger` seconds for what is queued."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close(linger=int(1000 * linger))

    def close_allowlist(self) -> None:
        """Stop CURVE's ZAP handler, if on (after the ROUTER is closed)."""
        if self._allow is not None:
            self._allow.close()
