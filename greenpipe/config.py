"""Settings for web.py and server.py: defaults < environment < flags, resolved once.

Only this module reads ``os.environ``; the library receives frozen settings objects.
Every value is converted and checked here, and a bad one raises `ConfigError`
naming the setting, the value, where it came from and what to do. The
settings classes live in `websettings` and `workersettings`, the workers'
addresses in `endpoints`, the reading of a class in `loader`; every name is
still imported from here.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from greenpipe import logs, values
from greenpipe.endpoints import (
    DEFAULT_WORKERS,
    Endpoint,
    parse_endpoint,
    parse_workers,
    read_workers_file,
)
from greenpipe.errors import ConfigError
from greenpipe.loader import (
    ALIASES,
    _warned_aliases,  # noqa: F401 (tests reset it)
    env_names,
    load_settings,
    to_flags,
)
from greenpipe.values import KiB, MiB, loopback, setting
from greenpipe.websettings import PipeSettings, WebSettings
from greenpipe.workersettings import WorkerSettings

__all__ = [
    "ALIASES", "DEFAULT_WORKERS", "Endpoint", "KiB", "MiB", "PipeSettings",
    "WebSettings", "WorkerSettings", "app_spec", "check_pipe", "configure_logging",
    "early_log_format", "env_names", "extension_environ", "load_settings", "load_web",
    "load_worker", "loopback", "parse_endpoint", "parse_workers", "read_workers_file",
    "setting", "to_flags",
]  # fmt: skip

_P = TypeVar("_P", bound="PipeSettings")


def load_web(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] = os.environ,
    app_config: Mapping[str, Any] | None = None,
    prog: str | None = None,
) -> WebSettings:
    """Resolve web.py's settings: flags, then app.config, environment, defaults.

    `prog` names the program in usage and errors (default: the script run,
    as argparse does: ``web.py``, ``myapp.py``).

    `app_config` is a Flask app's config: ``GREENPIPE_WORKERS`` and the like
    (the environment variable's name with a ``GREENPIPE_`` prefix), typed
    values allowed (a list of workers, an int, a bool).
    """
    description = (
        "greenpipe web: turns every HTTP request into one job for the workers."
    )
    return check_pipe(
        load_settings(WebSettings, prog, description, argv, environ, app_config)
    )


def app_spec(
    argv: Sequence[str] | None, environ: Mapping[str, str] = os.environ
) -> str:
    """APP for ``greenpipe web`` (flag, then environment), before its app.config.

    The app is imported before the settings are read, since its app.config
    is one of their levels. A value that is no ``module:name`` gives "": the
    settings, read next, say what is wrong with it.
    """
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--app", default=None)
    known, _ = parser.parse_known_args(list(argv or []))
    raw = known.app
    if raw is None:
        raw = next((environ[n] for n in env_names("app") if n in environ), "")
    try:
        return values.optional_spec(raw)
    except ValueError:
        return ""


def check_pipe(settings: _P) -> _P:
    """What a pipe's settings must agree on together; WORKERS_FILE read."""
    if settings.heartbeat * 2 > settings.heartbeat_timeout:
        raise ConfigError(
            f"HEARTBEAT_TIMEOUT: expected at least twice HEARTBEAT "
            f"({settings.heartbeat} s), got {settings.heartbeat_timeout}; "
            "raise HEARTBEAT_TIMEOUT or lower HEARTBEAT"
        )
    if settings.max_deliveries > 255:
        raise ConfigError(
            f"MAX_DELIVERIES: expected at most 255, got {settings.max_deliveries}; "
            "lower it"
        )
    _pair(settings.curve_secret, "CURVE_SECRET", settings.curve_server, "CURVE_SERVER",
          "the workers' public key file (their NAME.key)")  # fmt: skip
    if settings.workers_file:
        settings = replace(settings, workers=read_workers_file(settings.workers_file))
    if settings.min_ready > len(settings.workers):
        raise ConfigError(
            f"MIN_READY: expected at most the number of workers "
            f"({len(settings.workers)}), got {settings.min_ready}; lower it, or "
            "unset it to wait for all of them"
        )
    return settings


def _pair(first: str, name: str, second: str, other: str, what: str) -> None:
    """CURVE settings come in pairs: one without the other is a mistake."""
    if bool(first) != bool(second):
        given, missing = (name, other) if first else (other, name)
        raise ConfigError(
            f"{given} is set but {missing} is not: CURVE needs both. Set {missing} "
            f"({what if missing == other else 'a secret key file from greenpipe keys'})"
            f", or unset {given} to run without CURVE"
        )


def load_worker(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] = os.environ,
    prog: str | None = None,
) -> WorkerSettings:
    """Resolve server.py's settings from flags, then environment, then defaults."""
    description = "greenpipe worker: runs each job it receives, then acknowledges it."
    settings = load_settings(WorkerSettings, prog, description, argv, environ)
    _pair(settings.curve_secret, "CURVE_SECRET", settings.curve_allow, "CURVE_ALLOW",
          "a directory of the webs' public key files")  # fmt: skip
    return settings


def configure_logging(level: str, log_format: str = "text") -> None:
    """Log to stderr: timestamped text, or JSON lines (`greenpipe.logs`)."""
    logs.configure(level, log_format)


def early_log_format(
    argv: Sequence[str] | None, environ: Mapping[str, str] = os.environ
) -> str:
    """LOG_FORMAT before the settings are read, so a bad setting's line has it too.

    Best effort: a value that is not "json" means text (the settings, read
    next, say what is wrong with it).
    """
    args = list(argv or [])
    raw = ""
    for i, arg in enumerate(args):
        if arg == "--log-format" and i + 1 < len(args):
            raw = args[i + 1]
        elif arg.startswith("--log-format="):
            raw = arg.split("=", 1)[1]
    if not raw:
        raw = next((environ[n] for n in env_names("log_format") if n in environ), "")
    return "json" if raw.strip().lower() == "json" else "text"


def extension_environ(
    name: str, default: Any = None, environ: Mapping[str, str] | None = None
) -> Any:
    """The Flask extension's own key (GREENPIPE_INLINE, GREENPIPE_HANDLERS) from
    the environment, which ranks below app.config; `default` when unset."""
    return (os.environ if environ is None else environ).get(name, default)
