"""Settings for web.py and server.py: defaults < environment < flags, resolved once.

Only this module reads ``os.environ``; the library receives frozen settings objects.
Every value is converted and checked here, and a bad one raises `ConfigError`
naming the setting, the value, where it came from and what to do.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

from greenpipe import logs, spelling, values
from greenpipe.errors import ConfigError
from greenpipe.spelling import PREFIX
from greenpipe.values import KiB, MiB, loopback  # noqa: F401 (loopback: fleet imports it here)

log = logging.getLogger(__name__)

# Old names still read, each for the setting it became (flag, app.config and
# environment alike); the new name wins at the same level. One warning each.
ALIASES = {"max_attempts": "max_deliveries"}
_warned_aliases: set[object] = set()  # what was warned about once
_S = TypeVar("_S", bound="PipeSettings | WorkerSettings")  # load_settings makes
_P = TypeVar("_P", bound="PipeSettings")


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


def setting(
    default: Any, parse: Callable[[str], Any], help: str, shown: str = ""
) -> Any:
    """A dataclass field that knows how to read itself from text."""
    return field(
        default=default, metadata={"parse": parse, "help": help, "shown": shown}
    )


DEFAULT_WORKERS = tuple(
    Endpoint(f"tcp://127.0.0.1:{port}") for port in (4444, 4445, 4446)
)


@dataclass(frozen=True, slots=True)
class PipeSettings:
    """What a `Pipe` (the dispatcher) needs: workers, bounds, timing; no HTTP."""

    workers: tuple[Endpoint, ...] = setting(
        DEFAULT_WORKERS,
        parse_workers,
        "workers in round-robin order (host:port, tcp://, ipc://, push+tcp://)",
        "127.0.0.1:4444,127.0.0.1:4445,127.0.0.1:4446",
    )
    workers_file: str = setting(
        "",
        values.optional_path,
        "a file of workers, one per line (# comments): read at start and on SIGHUP, "
        "so workers are added and removed live; overrides WORKERS",
    )
    ready_timeout: float = setting(
        10.0, values.seconds, "seconds a request waits for the barrier"
    )
    min_ready: int = setting(
        0,
        values.min_ready,
        "workers READY that meet the barrier (the others join when they come); "
        "all: every configured worker",
        "all",
    )
    max_body: int = setting(MiB, values.size, "largest request body accepted", "1MiB")
    max_pending: int = setting(
        1000, values.positive_int, "jobs waiting for a worker, at most"
    )
    max_scheduled: int = setting(
        100_000, values.positive_int, "delayed jobs waiting for their time, at most"
    )
    max_delay: float = setting(
        7 * 86400.0, values.horizon, "how far ahead a job may be delayed, seconds"
    )
    drain_timeout: float = setting(
        3.0, values.seconds, "seconds to wait for acks when stopping"
    )
    heartbeat: float = setting(
        0.5, values.seconds, "seconds between heartbeats, both ways"
    )
    heartbeat_timeout: float = setting(
        3.0, values.seconds, "silence after which a worker is lost"
    )
    job_timeout: float = setting(
        30.0, values.seconds, "time limit a worker gives each handler"
    )
    max_deliveries: int = setting(
        3,
        values.positive_int,
        "deliveries of one run of a job before dead-letter (a lost worker's jobs "
        "are delivered again); MAX_ATTEMPTS is its old name",
    )
    dead_letter: str = setting(
        "dead-letter.jsonl", values.path, "file for jobs given up on"
    )
    status_keep: int = setting(
        10_000, values.positive_int, "finished jobs whose status GET /jobs/<id> keeps"
    )
    status_ttl: float = setting(
        300.0, values.seconds, "seconds a finished job's status is kept"
    )
    journal_dir: str = setting(
        ".greenpipe-journal",
        values.journal_dir,
        "directory of the journal that 202s survive a crash by (off: none)",
    )
    journal_sync: str = setting(
        "none",
        values.choice("none", "batch"),
        "none: survives a process crash; batch: fdatasync per group, a power loss",
    )
    journal_corrupt: str = setting(
        "salvage",
        values.choice("salvage", "refuse"),
        "a damaged journal segment: replay what can be read, or refuse to start",
    )
    journal_takeover: bool = setting(
        False,
        values.flag,
        "replay a JOURNAL_DIR another web left (other workers, or CURVE) here",
    )
    idempotency_ttl: float = setting(
        3600.0, values.seconds, "seconds an Idempotency-Key maps to its first job"
    )
    metrics: bool = setting(True, values.flag, "serve GET /metrics (Prometheus)")
    curve_secret: str = setting(
        "",
        values.optional_path,
        "this web's secret key file (greenpipe keys): turns CURVE on for every "
        "worker link",
    )
    curve_server: str = setting(
        "", values.optional_path, "the workers' public key file (with CURVE_SECRET)"
    )
    dashboard: bool = setting(
        True,
        values.flag,
        "serve GET /dashboard, a live page of the pipe and its workers",
    )
    reuse_port: bool = setting(
        False, values.flag, "bind HTTP with SO_REUSEPORT (shared port)"
    )
    unknown_settings: str = setting(
        "warn",
        values.choice("warn", "refuse"),
        "a GREENPIPE_* name (environment, app.config) or a near-miss of a "
        "setting's name that is no setting: warn at start, or refuse to start",
    )
    log_level: str = setting("INFO", values.log_level, "DEBUG, INFO, WARNING or ERROR")
    log_format: str = setting(
        "text",
        values.choice("text", "json"),
        "text: TIME LEVEL logger: message (ISO-8601 UTC, ms); json: one object a line",
    )

    @property
    def max_attempts(self) -> int:
        """MAX_DELIVERIES by its old name (deprecated)."""
        return self.max_deliveries


@dataclass(frozen=True, slots=True)
class WebSettings(PipeSettings):
    """Everything web.py needs: the pipe's settings and the HTTP server's."""

    port: int = setting(4567, values.port, "HTTP port")
    host: str = setting("127.0.0.1", values.host, "HTTP interface to bind")
    max_connections: int = setting(
        1000, values.positive_int, "HTTP connections served at once"
    )
    header_timeout: float = setting(
        10.0,
        values.seconds,
        "seconds a new connection has to send a request's line and headers",
    )
    idle_timeout: float = setting(
        30.0,
        values.seconds,
        "seconds a keep-alive connection may wait for its next request",
    )
    body_timeout: float = setting(
        30.0,
        values.seconds,
        "seconds a request's body has to arrive, after its headers",
    )
    max_wait: float = setting(30.0, values.seconds, "cap on Prefer: wait=N, seconds")
    access_log: bool = setting(False, values.flag, "log one line per HTTP request")
    web_processes: int = setting(
        1, values.positive_int, "web.py processes sharing the port"
    )
    app: str = setting(
        "",
        values.optional_spec,
        "package.module:app, a Flask app with Greenpipe(app) that greenpipe web "
        "serves as serve(app) does, instead of its own",
    )
    ops_port: int = setting(
        -1,
        values.optional_port,
        "a port of each web process's own for /metrics, /stats, /healthz and "
        "/dashboard (0: the OS picks; with WEB_PROCESSES=K, K ports from it); off",
    )


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """Everything server.py needs: its port, and optional tuning."""

    port: int = setting(
        4444, values.port, "port to bind (0: the OS picks, and it is logged)"
    )
    host: str = setting("127.0.0.1", values.host, "interface to bind")
    concurrency: int = setting(
        100, values.positive_int, "jobs handled at once (greenlets)"
    )
    handler: str = setting(
        "greenpipe.handlers:log_job",
        values.handler,
        "package.module:NAME, a callable or a Handlers registry run per job",
    )
    app: str = setting(
        "",
        values.optional_spec,
        "package.module:app, a Flask app whose context handlers run in",
    )
    drain_timeout: float = setting(
        3.0, values.seconds, "seconds to finish jobs when stopping"
    )
    retries: int = setting(
        0,
        values.retries_count,
        "retries of a failed job whose handler declares no policy",
    )
    retry_backoff: float = setting(
        1.0, values.seconds, "seconds before the first of those, doubling, jittered"
    )
    curve_secret: str = setting(
        "",
        values.optional_path,
        "this worker's secret key file (greenpipe keys): turns CURVE on",
    )
    curve_allow: str = setting(
        "",
        values.optional_path,
        "directory of the web public key files (NAME.key) allowed in (with "
        "CURVE_SECRET)",
    )
    max_frame: int = setting(
        16 * MiB + 64 * KiB,
        values.size,
        "largest job frame accepted from a peer",
        "16MiB+64KiB",
    )
    unknown_settings: str = setting(
        "warn",
        values.choice("warn", "refuse"),
        "a GREENPIPE_* name (environment, app.config) or a near-miss of a "
        "setting's name that is no setting: warn at start, or refuse to start",
    )
    log_level: str = setting("INFO", values.log_level, "DEBUG, INFO, WARNING or ERROR")
    log_format: str = setting(
        "text",
        values.choice("text", "json"),
        "text: TIME LEVEL logger: message (ISO-8601 UTC, ms); json: one object a line",
    )


def env_names(name: str) -> tuple[str, ...]:
    """Environment variables for a setting, strongest first.

    One rule: ``GREENPIPE_<NAME>`` (as in app.config, and what the key tool's
    advice reads like) or the bare ``<NAME>``; the prefixed one wins when both
    are set. ``port`` in lower case (the original setup's spelling) outranks
    ``PORT``, which honcho exports to every process it starts (5000, 5100, …).
    """
    bare = ("port", "PORT") if name == "port" else (name.upper(),)
    return (PREFIX + name.upper(), *bare)


def _lookup(
    name: str,
    flags: Mapping[str, str],
    environ: Mapping[str, str],
    app_config: Mapping[str, Any],
) -> tuple[str | None, str, str]:
    """Return (raw text, where it came from, the name to show in errors).

    A setting's old name (`ALIASES`) is read at each level after its own.
    """
    label = "port" if name == "port" else name.upper()
    names = [name, *(old for old, new in ALIASES.items() if new == name)]
    for each in names:
        if each in flags:
            return flags[each], f"flag --{each.replace('_', '-')}", each.upper()
    for each in names:
        key = PREFIX + each.upper()
        if key in app_config:
            return _text(app_config[key]), f"app.config[{key!r}]", key
    for each in names:
        for env in env_names(each):
            if env in environ:
                return environ[env], f"environment variable {env}", env
    return None, "default", label


def _warn_alias(old: str, source: str) -> None:
    """Once per old name and process: say what it is called now."""
    if old not in _warned_aliases:
        _warned_aliases.add(old)
        log.warning(
            "%s is deprecated: it is %s now (%s); rename it, it means the same",
            old.upper(),
            ALIASES[old].upper(),
            source,
        )


def _setting_names(cls: type) -> list[str]:
    """The settings of `cls`, upper case, and the old names still read."""
    names = [f.name for f in fields(cls)]
    return [n.upper() for n in names + [o for o, n in ALIASES.items() if n in names]]


def _shown_default(f: Any) -> str:
    if f.metadata["shown"]:
        return str(f.metadata["shown"])
    return str(f.default).lower() if isinstance(f.default, bool) else str(f.default)


def _text(value: Any) -> str:
    """app.config values may be typed: True, 3, 2.5, ["127.0.0.1:4444", ...]."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return str(value)


def load_settings(
    cls: type[_S],
    prog: str | None,
    description: str,
    argv: Sequence[str] | None,
    environ: Mapping[str, str],
    app_config: Mapping[str, Any] | None = None,
) -> _S:
    """The settings of `cls` (its fields): flags, app.config, environment, defaults."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        argument_default=argparse.SUPPRESS,
        epilog="Each flag also reads the environment variables named in its help "
        "(GREENPIPE_NAME or NAME; the first wins); flags win over the environment, "
        "which wins over the defaults.",
    )
    for f in fields(cls):
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            metavar=f.name.upper(),
            help=f"{f.metadata['help']} [env {'/'.join(env_names(f.name))}; "
            f"default {_shown_default(f)}]",
        )
        for old in (old for old, new in ALIASES.items() if new == f.name):
            parser.add_argument("--" + old.replace("_", "-"), dest=old,
                                help=argparse.SUPPRESS)  # fmt: skip
    flags = vars(parser.parse_args(argv))
    given: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for f in fields(cls):
        raw, source, label = _lookup(f.name, flags, environ, app_config or {})
        if raw is None:
            continue
        sources[f.name] = source
        used = label.removeprefix(PREFIX).lower()
        if used in ALIASES:
            _warn_alias(used, source)
        try:
            given[f.name] = f.metadata["parse"](raw)
        except ValueError as exc:
            raise ConfigError(
                f"{label}: expected {exc}, got {raw!r} ({source}); fix it, or unset it "
                f"to use the default {_shown_default(f)}"
            ) from None
    _workers_outrank_file(given, sources)
    settings = cls(**given)
    known = set(_setting_names(WebSettings)) | set(_setting_names(WorkerSettings))
    problems = spelling.unknown(_setting_names(cls), known, environ, app_config or {})
    spelling.report(problems, settings.unknown_settings == "refuse")
    return settings


def _rank(source: str) -> int:
    """0 for a flag, 1 for app.config, 2 for the environment: the lower wins."""
    return 0 if source.startswith("flag") else 1 if source.startswith("app") else 2


def _workers_outrank_file(given: dict[str, Any], sources: dict[str, str]) -> None:
    """WORKERS from a stronger level than WORKERS_FILE wins over the file.

    At one level the file wins (it is read "instead of WORKERS"); across
    levels the usual order holds: ``app.config["GREENPIPE_WORKERS"]`` over an
    environment ``WORKERS_FILE``, a ``--workers`` flag over either.
    """
    if "workers" not in sources or not given.get("workers_file"):
        return
    if _rank(sources["workers"]) < _rank(sources["workers_file"]):
        dropped = given.pop("workers_file")
        if ("WORKERS_FILE", dropped) in _warned_aliases:
            return  # settings read twice (greenpipe web --app): said once
        _warned_aliases.add(("WORKERS_FILE", dropped))
        log.warning(
            "WORKERS_FILE=%r (%s) is not read: WORKERS (%s) outranks it; unset "
            "one of them", dropped, sources["workers_file"], sources["workers"],
        )  # fmt: skip


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


def to_flags(settings: Any) -> list[str]:
    """Flags that load back into the same settings (for child processes)."""
    argv = []
    for f in fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, bool):
            text = "yes" if value else "no"
        elif isinstance(value, tuple):
            text = ",".join(map(str, value))
        else:
            text = str(value)
        argv += ["--" + f.name.replace("_", "-"), text]
    return argv


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
