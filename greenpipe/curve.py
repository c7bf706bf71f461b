"""CurveZMQ for worker links: key files, the key tool, and a ZAP handler for gevent.

A worker with CURVE on is a CURVE server: it holds a secret key and accepts
only the web (client) public keys in its allowlist, a directory of public key
files. The check is ZAP (RFC 27): libzmq asks whoever is bound to
``inproc://zeromq.zap.01`` in the socket's context, for every handshake.
pyzmq's authenticators run in a thread or an asyncio loop; under gevent the
worker's own greenlet answers instead (`Allowlist`), with a zmq.green socket
owned by that one greenlet. It is bound before the worker's socket, because
libzmq 4.3 lets every client in when no ZAP handler is bound at all.

Keys live in files in pyzmq's certificate format (``zmq.auth``), never in
the environment or on the command line, where ``/proc`` shows them.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import gevent
import zmq.green as zmq
from zmq import curve_keypair
from zmq.auth import load_certificate
from zmq.utils import z85

from greenpipe.errors import ConfigError
from greenpipe.throttle import Throttle

log = logging.getLogger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
DOMAIN = b"greenpipe"


@dataclass(frozen=True, slots=True)
class Keypair:
    public: bytes  # Z85, 40 characters
    secret: bytes


def fingerprint(public: bytes) -> str:
    """A short, stable name for a public key (Z85 or raw 32 bytes) in logs."""
    raw = z85.decode(public) if len(public) == 40 else public
    return hashlib.sha256(raw).hexdigest()[:16]


def _read(path: str, setting: str, what: str) -> tuple[bytes, bytes | None]:
    try:
        return load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{setting}={path!r}: cannot read a {what} file ({exc}); make one with "
            "`python -m greenpipe keys DIR NAME` (NAME.key_secret is the secret, "
            "NAME.key the public key)"
        ) from None


def load_secret(path: str, setting: str) -> Keypair:
    """The keypair in a secret key file (``NAME.key_secret``); ConfigError if not."""
    public, secret = _read(path, setting, "secret key")
    if not secret:
        raise ConfigError(
            f"{setting}={path!r} holds only a public key; give the NAME.key_secret "
            "file written by `python -m greenpipe keys`"
        )
    mode = os.stat(path).st_mode & 0o777
    if mode & 0o077:
        log.warning("%s: %s can be read by other users (mode %o); chmod 600 it",
                    setting, path, mode)  # fmt: skip
    return Keypair(public, secret)


def load_public(path: str, setting: str) -> bytes:
    """The public key in a key file (either of the pair); ConfigError if not."""
    return _read(path, setting, "public key")[0]


def load_allowlist(directory: str, setting: str) -> dict[bytes, str]:
    """Raw 32-byte public keys -> file name, from every ``*.key`` in `directory`."""
    folder = Path(directory)
    if not folder.is_dir():
        raise ConfigError(
            f"{setting}={directory!r} is not a directory; it holds the public key "
            "files (NAME.key) of the webs this worker accepts"
        )
    allowed: dict[bytes, str] = {}
    for path in sorted(folder.glob("*.key")):
        allowed[z85.decode(load_public(str(path), setting))] = path.name
    if not allowed:
        raise ConfigError(
            f"{setting}={directory!r} holds no public key files (*.key): no web "
            "could connect. Copy each web's NAME.key there"
        )
    return allowed


def write_keypair(directory: str, name: str) -> tuple[Path, Path]:
    """Write NAME.key and NAME.key_secret (mode 0600) in `directory`; never overwrite.

    Same format as ``zmq.auth.create_certificates``, which leaves the secret
    file readable by everyone; this one is created 0600 from the start.
    """
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"key name {name!r}: a plain file name, such as web1")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    public_path, secret_path = folder / f"{name}.key", folder / f"{name}.key_secret"
    for path in (public_path, secret_path):
        if path.exists():
            raise ConfigError(
                f"{path} exists; refusing to overwrite a key. Pick another name, "
                "or remove the old pair yourself if you mean to replace it"
            )
    public, secret = curve_keypair()
    banner = "#   ZeroMQ CURVE {} Certificate (greenpipe keys)\n\n"
    body = 'metadata\ncurve\n    public-key = "{}"\n'
    public_text = banner.format("Public") + body.format(public.decode())
    secret_text = (
        banner.format("**Secret**")
        + body.format(public.decode())
        + f'    secret-key = "{secret.decode()}"\n'
    )
    fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(secret_text)
    fd = os.open(public_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w") as file:
        file.write(public_text)
    return public_path, secret_path


def keys_main(argv: list[str]) -> int:
    """``python -m greenpipe keys DIR NAME``: a keypair, and where to copy what."""
    if len(argv) != 2:
        print("usage: python -m greenpipe keys DIR NAME   (e.g. keys/ web1)")
        return 2
    try:
        public, secret = write_keypair(argv[0], argv[1])
    except (ConfigError, OSError) as exc:
        print(f"greenpipe keys: {exc}")
        return 1
    print(
        f"wrote {public} (public) and {secret} (secret, mode 0600)\n"
        f"fingerprint {fingerprint(load_certificate(str(public))[0])}\n\n"
        f"If {argv[1]} is a web, start it with\n"
        f"    CURVE_SECRET={secret} CURVE_SERVER=<the workers' NAME.key>\n"
        f"    (in app.config: GREENPIPE_CURVE_SECRET, GREENPIPE_CURVE_SERVER)\n"
        f"    and copy {public} into each worker's CURVE_ALLOW directory\n"
        f"If {argv[1]} is a worker, start it with\n"
        f"    CURVE_SECRET={secret} CURVE_ALLOW=<a directory of the webs' .key files>\n"
        f"    and give each web CURVE_SERVER={public}\n"
        "Keep the secret file on its own machine; only .key files travel."
    )
    return 0


class Allowlist:
    """The worker's ZAP handler: CURVE clients whose key is listed get in.

    One greenlet owns a zmq.green REP socket at ``inproc://zeromq.zap.01``.
    Each refusal is counted (it reaches the webs with the heartbeats) and
    logged, rate-limited, with the peer's address and the key's fingerprint.
    The directory is read again when it changes (its mtime), so keys are
    added and removed without restarting the worker; a connection already
    let in stays in until it closes.
    """

    def __init__(self, context: zmq.Context, allowed: dict[bytes, str], where: str):
        self.allowed = allowed
        self.where = where
        self._stamp = self._mtime()
        self.refused = 0
        self._throttle = Throttle(log)
        self._sock = context.socket(zmq.REP)
        self._sock.setsockopt(zmq.LINGER, 0)
        try:
            self._sock.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as exc:
            self._sock.close(0)
            raise ConfigError(
                f"cannot bind the ZAP handler ({exc}): one worker per process"
            ) from None
        self._greenlet = gevent.spawn(self._serve)

    def _serve(self) -> None:
        sock = self._sock
        while True:
            try:
                frames = sock.recv_multipart()
            except zmq.ZMQError:
                return  # closed
            try:
                reply = self._decide(frames)
            except Exception:  # never leave a handshake without an answer
                log.exception("ZAP: unexpected error; refusing the handshake")
                reply = [b"1.0", frames[1] if len(frames) > 1 else b"", b"500",
                         b"internal error", b"", b""]  # fmt: skip
            sock.send_multipart(reply)

    def _mtime(self) -> int:
        try:
            return os.stat(self.where).st_mtime_ns
        except OSError:
            return -1

    def _refresh(self) -> None:
        """Re-read the directory if it changed: keys are added and removed live."""
        stamp = self._mtime()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            allowed = load_allowlist(self.where, "CURVE_ALLOW")
        except ConfigError as exc:
            log.error("CURVE_ALLOW changed but cannot be used (%s); keeping the "
                      "%d keys allowed before", exc, len(self.allowed))  # fmt: skip
            return
        log.info("CURVE_ALLOW %s changed: %d web keys allowed (were %d)",
                 self.where, len(allowed), len(self.allowed))  # fmt: skip
        self.allowed = allowed

    def _decide(self, frames: list[bytes]) -> list[bytes]:
        self._refresh()
        if len(frames) < 6:
            request = frames[1] if len(frames) > 1 else b""
            return [b"1.0", request, b"400", b"malformed ZAP request", b"", b""]
        version, request, domain, address, _identity, mechanism = frames[:6]
        credentials = frames[6:]
        peer = address.decode("ascii", "replace")
        if mechanism == b"CURVE" and len(credentials) == 1:
            name = self.allowed.get(credentials[0])
            if name is not None:
                return [version, request, b"200", b"OK", name.encode(), b""]
            self._refuse(peer, f"client key {fingerprint(credentials[0])} not in "
                         f"the allowlist {self.where}")  # fmt: skip
            return [version, request, b"400", b"key not allowed", b"", b""]
        self._refuse(peer, f"mechanism {mechanism.decode('ascii', 'replace')}")
        return [version, request, b"400", b"CURVE required", b"", b""]

    def _refuse(self, peer: str, why: str) -> None:
        self.refused += 1
        self._throttle.warning(
            f"refused:{peer}",
            "refused a handshake from %s: %s (refused so far: %d); if this web "
            "should get in, copy its NAME.key into %s",
            peer,
            why,
            self.refused,
            self.where,
        )

    def close(self) -> None:
        self._greenlet.kill(block=False)
        self._sock.close(0)
