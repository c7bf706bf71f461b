"""Where the workers are: `Endpoint`, and the WORKERS list and file read into them."""

from __future__ import annotations

from dataclasses import dataclass

from greenpipe import values
from greenpipe.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One configured worker: a ZeroMQ endpoint and how jobs are handed to it.

    ``reliable`` endpoints speak the greenpipe protocol (DEALER to a worker's ROUTER,
    acknowledged, re-sent on loss). ``push+tcp://…`` endpoints are plain ZeroMQ
    PULL sockets in any language: PUSH, at most once, no acknowledgements.
    """

    address: str
    reliable: bool = True

    def __str__(self) -> str:
        return self.address if self.reliable else "push+" + self.address

    @property
    def host(self) -> str:
        """The host part of ``tcp://host:port``."""
        return self.address.split("://", 1)[-1].rsplit(":", 1)[0]


def parse_endpoint(item: str) -> Endpoint:
    """Turn ``host:port``, ``tcp://…``, ``ipc://…`` or ``push+…`` into an Endpoint."""
    text = item.strip()
    reliable = not text.startswith("push+")
    if not reliable:
        text = text[len("push+") :]
    if text.startswith("ipc://") and len(text) > len("ipc://"):
        return Endpoint(text, reliable)
    bare = text[len("tcp://") :] if text.startswith("tcp://") else text
    match = values.HOST_PORT.match(bare)
    if not match or not 1 <= int(match["port"]) <= 65535:
        raise ValueError(
            "a comma-separated list of workers as host:port (1-65535), "
            "tcp://host:port, ipc://path, or push+tcp://host:port for a plain "
            "PULL worker"
        )
    return Endpoint(f"tcp://{match['host']}:{int(match['port'])}", reliable)


def parse_workers(raw: str) -> tuple[Endpoint, ...]:
    items = [item for item in raw.split(",") if item.strip()]
    if not items:
        raise ValueError("at least one worker, e.g. 127.0.0.1:4444,127.0.0.1:4445")
    endpoints = tuple(parse_endpoint(item) for item in items)
    seen: set[str] = set()
    for endpoint in endpoints:
        if endpoint.address in seen:
            raise ValueError(f"each worker once ({endpoint.address} is listed twice)")
        seen.add(endpoint.address)
    return endpoints


DEFAULT_WORKERS = tuple(
    Endpoint(f"tcp://127.0.0.1:{port}") for port in (4444, 4445, 4446)
)


def read_workers_file(path: str) -> tuple[Endpoint, ...]:
    """The workers listed in `path`, one per line; ConfigError naming what is wrong."""
    try:
        with open(path, encoding="utf-8") as file:
            lines = [line.split("#", 1)[0].strip() for line in file]
    except OSError as exc:
        raise ConfigError(
            f"WORKERS_FILE={path!r}: cannot read it ({exc.strerror}); give a file "
            "with one worker per line, e.g. 127.0.0.1:4444"
        ) from None
    try:
        return parse_workers(",".join(line for line in lines if line))
    except ValueError as exc:
        raise ConfigError(
            f"WORKERS_FILE={path!r}: expected {exc}; one worker per line"
        ) from None
