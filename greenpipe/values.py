"""The converters of settings: each takes the raw text and returns the value.

Each raises ValueError whose text says what was expected; `greenpipe.config`
wraps it with the setting's name, the value, where it came from and what to do.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import field
from typing import Any

KiB = 1 << 10
MiB = 1 << 20

_SIZE = re.compile(r"^\s*(\d+)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": KiB, "kb": KiB, "kib": KiB, "m": MiB, "mb": MiB}
_UNITS |= {"mib": MiB, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30}
HOST_PORT = re.compile(r"^(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(?P<port>\d+)$")
_HANDLER = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def port(raw: str) -> int:
    if not raw.strip().isdigit() or not 0 <= int(raw) <= 65535:
        raise ValueError("an integer port 0-65535 (0: the OS picks one)")
    return int(raw)


def optional_port(raw: str) -> int:
    text = raw.strip().lower()
    if text in ("", "off", "no", "-1"):
        return -1
    try:
        return port(text)
    except ValueError:
        raise ValueError("a port 0-65535 (0: the OS picks one), or off") from None


def host(raw: str) -> str:
    host = raw.strip()
    if not host or any(c.isspace() or c in "/@[]" for c in host):
        raise ValueError("a host name or IP address such as 127.0.0.1 or 0.0.0.0")
    return host


def positive_int(raw: str) -> int:
    if not raw.strip().isdigit() or int(raw) < 1:
        raise ValueError("a whole number of at least 1")
    return int(raw)


def min_ready(raw: str) -> int:
    """MIN_READY: a number of workers, or all (0)."""
    text = raw.strip().lower()
    if text in ("all", "0"):
        return 0
    if not text.isdigit():
        raise ValueError("a number of workers of at least 1, or all")
    return int(text)


def count(raw: str) -> int:
    if not raw.strip().isdigit():
        raise ValueError("a whole number, 0 or more")
    return int(raw)


LONGEST_DELAY = 366 * 86400.0  # seconds: the most MAX_DELAY (or a backoff) may be


def retries_count(raw: str) -> int:
    """RETRIES: a whole number, at most MAX_RETRIES (they travel in 16 bits)."""
    value = count(raw)
    if value > MAX_RETRIES:
        raise ValueError(f"a whole number from 0 to {MAX_RETRIES}")
    return value


# Retries of one job, at most: `retries` and `attempt` travel as 16 bits, and
# a job's attempts are at most (retries + 1) x MAX_DELIVERIES (255): 65,280.
MAX_RETRIES = 255


def horizon(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= LONGEST_DELAY:
        raise ValueError("a number of seconds above 0, at most a year (31622400)")
    return value


def seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < 86400:
        raise ValueError("a number of seconds above 0, such as 2.5")
    return value


def size(raw: str) -> int:
    match = _SIZE.match(raw)
    if not match or int(match[1]) < 1:
        raise ValueError("a size in bytes such as 1048576, 512KiB or 1MiB")
    return int(match[1]) * _UNITS[(match[2] or "").lower()]


def flag(raw: str) -> bool:
    text = raw.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("a yes/no value: 1, true, yes, on, 0, false, no or off")


def log_level(raw: str) -> str:
    name = raw.strip().upper()
    if name not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("one of DEBUG, INFO, WARNING, ERROR")
    return name


def handler(raw: str) -> str:
    if not _HANDLER.match(raw.strip()):
        raise ValueError(
            "a handler as package.module:callable, e.g. greenpipe.handlers:log_job"
        )
    return raw.strip()


def queues(raw: str) -> str:
    """QUEUES: comma-separated queue names, in the form jobs carry them."""
    from greenpipe.jobs import QUEUE_RULE, queue_name

    names = [name.strip() for name in raw.split(",") if name.strip()]
    try:
        for name in names:
            queue_name(name)
    except ValueError:
        names = []
    if not names or len(names) > 255:
        raise ValueError(
            f"1-255 queue names, comma-separated, each {QUEUE_RULE}; "
            "e.g. default,reports"
        )
    return ",".join(dict.fromkeys(names))


def choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ValueError("one of " + ", ".join(options))
        return value

    return parse


def journal_dir(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ValueError("a directory path, or off")
    return "off" if value.lower() in ("off", "no", "0", "false") else value


def result_store(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ValueError("journal (a file in JOURNAL_DIR), a file path, or off")
    lowered = value.lower()
    if lowered in ("off", "no", "0", "false"):
        return "off"
    return "journal" if lowered == "journal" else value


def optional_spec(raw: str) -> str:
    return handler(raw) if raw.strip() else ""


def loopback(host: str) -> bool:
    """True if `host` is a loopback address or name (127.0.0.0/8, ::1, localhost)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def optional_path(raw: str) -> str:
    return raw.strip()


def path(raw: str) -> str:
    if not raw.strip():
        raise ValueError("a file path")
    return raw.strip()


def setting(
    default: Any, parse: Callable[[str], Any], help: str, shown: str = ""
) -> Any:
    """A dataclass field that knows how to read itself from text."""
    return field(
        default=default, metadata={"parse": parse, "help": help, "shown": shown}
    )


# The three settings every process has, web and worker alike (one field each).
def unknown_settings_setting() -> Any:
    return setting(
        "warn",
        choice("warn", "refuse"),
        "a GREENPIPE_* name (environment, app.config) or a near-miss of a "
        "setting's name that is no setting: warn at start, or refuse to start",
    )


def log_level_setting() -> Any:
    return setting("INFO", log_level, "DEBUG, INFO, WARNING or ERROR")


def log_format_setting() -> Any:
    return setting(
        "text",
        choice("text", "json"),
        "text: TIME LEVEL logger: message (ISO-8601 UTC, ms); json: one object a line",
    )
