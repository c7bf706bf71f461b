"""The settings of server.py, a worker: its port, and optional tuning."""

from __future__ import annotations

from dataclasses import dataclass

from greenpipe import values
from greenpipe.values import KiB, MiB, setting


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
    queues: str = setting(
        "default", values.queues, "queues it takes jobs from, comma-separated"
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
    unknown_settings: str = values.unknown_settings_setting()
    log_level: str = values.log_level_setting()
    log_format: str = values.log_format_setting()
