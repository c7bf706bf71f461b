"""The settings of a pipe (workers, bounds, timing) and of web.py's HTTP server."""

from __future__ import annotations

from dataclasses import dataclass

from greenpipe import values
from greenpipe.endpoints import DEFAULT_WORKERS, Endpoint, parse_workers
from greenpipe.values import MiB, setting


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
        "dead-letter.jsonl",
        values.path,
        "file for jobs that failed for good (failed or dead), to re-send",
    )
    resend_again_after: float = setting(
        30.0,
        values.seconds,
        "seconds after which a re-send whose job nothing knows is taken as never "
        "sent (a web killed mid-way): resend --again sends it",
    )
    status_keep: int = setting(
        10_000, values.positive_int, "finished jobs whose status GET /jobs/<id> keeps"
    )
    status_ttl: float = setting(
        300.0, values.seconds, "seconds a finished job's status is kept"
    )
    result_store: str = setting(
        "journal",
        values.result_store,
        "where finished jobs' records outlive a restart, for STATUS_TTL: an SQLite "
        "file (journal: results.sqlite3 in JOURNAL_DIR; a path; off: memory only)",
    )
    result_store_size: int = setting(
        256 * MiB,
        values.size,
        "bytes the result store's records may take; the oldest go first",
        "256MiB",
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
    unknown_settings: str = values.unknown_settings_setting()
    log_level: str = values.log_level_setting()
    log_format: str = values.log_format_setting()

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
