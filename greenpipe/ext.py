"""The Flask extension: ``pipe = Greenpipe(app)``, then ``pipe.push(...)`` in views."""

from __future__ import annotations

import atexit
import copy
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

import gevent
from flask import Blueprint, Flask, current_app, has_app_context, request

from greenpipe import routes
from greenpipe.config import WebSettings, extension_environ, load_web
from greenpipe.dashboard import dashboard_blueprint
from greenpipe.errors import BadJob, ConfigError, Unavailable
from greenpipe.handling import in_app_context
from greenpipe.inline import InlinePipe, load_handlers
from greenpipe.jobroutes import jobs_blueprint
from greenpipe.jobs import Handler, Outcome
from greenpipe.pipe import Pipe, Receipt
from greenpipe.purge import Purged
from greenpipe.pushargs import MISSING
from greenpipe.resend import Resent
from greenpipe.turns import took_turn
from greenpipe.values import flag

log = logging.getLogger(__name__)


class _State:
    """One app's greenpipe: its settings, and its pipe once started."""

    def __init__(
        self,
        ext: Greenpipe,
        app: Flask,
        settings: WebSettings | None,
        error: ConfigError | None = None,
    ) -> None:
        self.ext = ext
        self.app = app
        self._settings = settings
        self.error = error  # a bad setting, raised when the pipe is first needed
        self.ops_routes = False  # the operator's routes on the app's own port too
        self.pipe: Pipe | None = None
        # What greenpipe read from app.config, and when: a later change raises.
        self.read: dict[str, tuple[Any, str]] = {}
        self.size = 0  # len(app.config) when last looked over: a key added shows
        self.settings_read = INIT
        self.remember(INIT, self.settings_keys())

    def settings_keys(self) -> list[str]:
        config = self.app.config
        return [k for k in config if k.startswith("GREENPIPE_") and k not in AT_START]

    def remember(self, when: str, keys: list[str]) -> None:
        """Note the values of `keys` in app.config as read now, `when`."""
        config = self.app.config
        for key in keys:
            self.read[key] = (_copy(config.get(key, _ABSENT)), when)
        self.size = len(config)

    def reread(self, when: str) -> None:
        """The settings were read again (`use_settings`): forget the old ones."""
        for key in [k for k in self.read if k not in AT_START]:
            del self.read[key]
        self.settings_read = when
        self.remember(when, self.settings_keys())

    def check(self) -> None:
        """Raise `ConfigError` if a setting read before has changed since.

        About a microsecond per request: few settings are read, and the whole
        config is looked over only when its size changed (a key added).
        """
        config = self.app.config
        for key, (value, when) in self.read.items():
            if config.get(key, _ABSENT) != value:
                _changed(key, when)
        if len(config) != self.size:
            for key in self.settings_keys():
                if key not in self.read:
                    _changed(key, self.settings_read, added=True)
            self.size = len(config)

    @property
    def inline(self) -> bool:
        """GREENPIPE_INLINE (app.config, then the environment), else app.testing.

        Read when the pipe is first made.
        """
        return _extension_flag(self.app.config, "GREENPIPE_INLINE", self.app.testing)

    @property
    def settings(self) -> WebSettings:
        if self._settings is None:
            assert self.error is not None
            raise self.error
        return self._settings

    @settings.setter
    def settings(self, value: WebSettings) -> None:
        self._settings, self.error = value, None


INIT = "Greenpipe(app) / init_app"
START = "the first push (or start()), which chose inline mode or workers"
# Read when the pipe is made, not at init_app: TESTING may be set after
# Greenpipe(app), up to the first push (the README's test does).
AT_START = ("TESTING", "GREENPIPE_INLINE", "GREENPIPE_HANDLERS")
_ABSENT: Any = object()


def _copy(value: Any) -> Any:
    if value is _ABSENT:
        return value
    try:  # a list changed in place is a change too
        return copy.deepcopy(value)
    except Exception:  # an object that cannot be copied: compared as itself
        return value


def _changed(key: str, when: str, added: bool = False) -> None:
    what = "was set" if added else "changed"
    raise ConfigError(
        f"{key}: {what} in app.config after greenpipe read it (at {when}), so it "
        "would be silently ignored; set GREENPIPE_* settings before Greenpipe(app) "
        "or pipe.init_app(app), and TESTING or GREENPIPE_INLINE before the first "
        "push (or pipe.start())"
    )


def _away_from_cwd(settings: WebSettings, config: Mapping[str, Any]) -> WebSettings:
    """Under pytest, the journal and dead-letter file not given go to a temporary
    directory, not the working directory.

    A test that reaches real workers (TESTING left off) would otherwise leave
    ./.greenpipe-journal behind, which the next run, or the next real web
    started there, replays. Logged once per pipe, naming the directory.
    """
    if "pytest" not in sys.modules:
        return settings
    defaults = WebSettings()
    moved = {
        field: getattr(settings, field)
        for field, name in (
            ("journal_dir", "JOURNAL_DIR"),
            ("dead_letter", "DEAD_LETTER"),
        )
        if getattr(settings, field) == getattr(defaults, field)
        and f"GREENPIPE_{name}" not in config
        and name not in os.environ
    }
    if not moved:
        return settings
    where = tempfile.mkdtemp(prefix="greenpipe-test-")
    atexit.register(shutil.rmtree, where, ignore_errors=True)
    new: dict[str, Any] = {
        field: os.path.join(where, os.path.basename(old))
        for field, old in moved.items()
    }
    log.warning(
        "greenpipe under pytest, with workers (TESTING is off): %s not set, so "
        "%s in %s, removed at exit, not in the working directory; set "
        "GREENPIPE_JOURNAL_DIR / GREENPIPE_DEAD_LETTER to choose",
        " and ".join("GREENPIPE_" + field.upper() for field in moved),
        " and ".join(os.path.basename(old) for old in moved.values()),
        where,
    )
    return replace(settings, **new)


def _take_turn(_exc: BaseException | None = None) -> None:
    """Yield once after each request, unless greenpipe's own server does.

    On a keep-alive connection whose next request is already buffered, a
    server serves it without yielding, and the dispatcher and the ack readers
    starve (measured: see docs/design-notes.md). greenpipe's server yields
    itself; under another gevent server (gunicorn's) this does it.
    """
    if request.environ.get("greenpipe.http") is None and not took_turn():
        gevent.sleep(0)


def _ops_routes(config: Mapping[str, Any], default: bool) -> bool:
    """GREENPIPE_OPS_ROUTES (app.config, then the environment), else `default`."""
    return _extension_flag(
        config, "GREENPIPE_OPS_ROUTES", default, "; True serves /stats, /metrics "
        "and /dashboard on the app's own port, not only on OPS_PORT",
    )  # fmt: skip


def _extension_flag(
    config: Mapping[str, Any], key: str, default: bool, hint: str = ""
) -> bool:
    """A yes/no key of the extension's own: app.config, then the environment."""
    value = config.get(key, extension_environ(key, default))
    try:
        return flag(str(value))
    except ValueError as exc:
        raise ConfigError(f"{key}: expected {exc}, got {value!r}{hint}") from None


def extension_of(app: Any) -> Greenpipe | None:
    """The `Greenpipe` set up on `app` (a Flask app), or None if there is none."""
    state = getattr(app, "extensions", {}).get("greenpipe")
    return state.ext if isinstance(state, _State) else None


class Greenpipe:
    """greenpipe for a Flask app: settings from ``app.config``, a pipe per process.

        app = Flask(__name__)
        pipe = Greenpipe(app)          # or: pipe = Greenpipe(); pipe.init_app(app)

        @app.post("/signup")
        def signup():
            job = pipe.push("welcome_email", json=request.get_json())
            return {"id": job.id}, 202

    Settings are ``GREENPIPE_<NAME>`` in app.config (``GREENPIPE_WORKERS``,
    ``GREENPIPE_MAX_PENDING``, ... as the README's table), then the
    environment, then the defaults; a bad one raises `ConfigError` in
    `init_app`. Nothing is opened at import or in `init_app`: the pipe starts
    in the process that serves the first request (so a pre-forking server such
    as gunicorn starts one per worker process), or when `start` is called.
    ``GREENPIPE_PREFIX`` puts /healthz, /jobs/<id> and the operator's routes
    under a prefix; ``GREENPIPE_ROUTES = False`` leaves them all out. The
    operator's routes (/stats, /metrics, /dashboard and its re-send) answer
    on OPS_PORT only, unless ``GREENPIPE_OPS_ROUTES`` (app.config, then the
    environment, then `ops_routes`) is true. ``GREENPIPE_INLINE`` (on by
    default when ``app.testing``) runs each job at once with `handlers`, no
    workers needed.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        handlers: Handler | None = None,
        ops_routes: bool = False,
    ):
        self.handlers = handlers
        self.ops_routes = ops_routes  # GREENPIPE_OPS_ROUTES when neither sets it
        self._app = app
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        config = app.config
        try:
            settings, error = load_web([], os.environ, config), None
            config.setdefault("GREENPIPE_MAX_BODY", settings.max_body)
        except ConfigError as exc:
            # Kept, not raised: serve() may still fix it with a flag; else it is
            # raised by start() or the first push, and serve() exits 2 with it.
            settings, error = None, exc
        public = _ops_routes(config, self.ops_routes)
        state = _State(self, app, settings, error)
        state.ops_routes = public
        app.extensions["greenpipe"] = state
        app.register_error_handler(Unavailable, routes.unavailable)
        app.register_error_handler(BadJob, routes.bad_job)  # 413 / 400, as web.py
        app.teardown_request(_take_turn)
        if config.get("GREENPIPE_ROUTES", True):
            prefix = config.get("GREENPIPE_PREFIX", "") or None
            ops = routes.ops_blueprint(self.pipe_for)
            app.register_blueprint(ops, url_prefix=prefix)
            # The operator's: on OPS_PORT, or here with GREENPIPE_OPS_ROUTES.
            operator = routes.operator_blueprint(self.pipe_for, lambda: public)
            app.register_blueprint(operator, url_prefix=prefix)
            board = dashboard_blueprint(self.pipe_for, lambda: public)
            app.register_blueprint(board, url_prefix=prefix)
            many = jobs_blueprint(self.pipe_for, lambda: public)
            app.register_blueprint(many, url_prefix=prefix)

    def public_ops_routes(self, app: Flask | None = None) -> bool:
        """Whether /stats, /metrics and /dashboard answer on the app's own port
        (GREENPIPE_OPS_ROUTES), not only on OPS_PORT."""
        return self._state(app).ops_routes

    # -- which app, which pipe
    def _state(self, app: Flask | None = None) -> _State:
        if app is None:
            app = current_app._get_current_object() if has_app_context() else self._app  # type: ignore[attr-defined]
        if app is None or "greenpipe" not in app.extensions:
            raise RuntimeError(
                "greenpipe is not set up for this app: call Greenpipe(app) or "
                "pipe.init_app(app), and use it inside the app's context"
            )
        state: _State = app.extensions["greenpipe"]
        return state

    def pipe_for(self, app: Flask | None = None) -> Pipe:
        """This process's pipe for `app` (the current app by default), started.

        Raises `ConfigError` if a setting is bad.
        """
        state = self._state(app)
        state.check()
        pipe = state.pipe
        if pipe is None or not pipe.started:  # none yet, or forked since
            state.remember(START, list(AT_START))
            if state.inline:
                spec = state.app.config.get(
                    "GREENPIPE_HANDLERS", extension_environ("GREENPIPE_HANDLERS")
                )
                handler = load_handlers(spec, self.handlers)
                if handler is not None:
                    handler = in_app_context(handler, state.app)
                pipe = InlinePipe(handler, state.settings)
            else:
                pipe = Pipe(_away_from_cwd(state.settings, state.app.config))
                pipe.start()
            state.pipe = pipe
        return pipe

    @property
    def pipe(self) -> Pipe:
        return self.pipe_for()

    def settings(self, app: Flask | None = None) -> WebSettings:
        """The settings in force for `app`; raises `ConfigError` if one is bad."""
        return self._state(app).settings

    def use_settings(self, settings: WebSettings, app: Flask | None = None) -> None:
        """Make `settings` the ones in force (a server's command line has the
        last word), before the pipe starts; a pipe started already keeps its own.
        """
        state = self._state(app)
        state.settings = settings
        state.app.config["GREENPIPE_MAX_BODY"] = settings.max_body
        state.reread("serve() (use_settings)")

    # -- the verbs
    def push(
        self,
        name: str,
        *,
        json: Any = MISSING,
        body: bytes | str | None = None,
        content_type: str | None = None,
        wait: float = 0,
        idempotency_key: str = "",
        delay: float | None = None,
        at: datetime | None = None,
        queue: str = "default",
    ) -> Receipt | Outcome:
        """Hand one job named `name` to a worker: see `Pipe.push`.

        Raises `Unavailable` when no worker can take it; left uncaught in a
        view, it becomes a JSON 503 with Retry-After.
        """
        return self.pipe.push(
            name,
            json=json,
            body=body,
            content_type=content_type,
            wait=wait,
            idempotency_key=idempotency_key,
            delay=delay,
            at=at,
            queue=queue,
        )

    def cancel(self, job_id: str) -> dict[str, Any] | None:
        """Cancel a job: see `Pipe.cancel` (None if unknown)."""
        return self.pipe.cancel(job_id)

    def status(self, job_id: str) -> dict[str, Any] | None:
        """What became of a job: queued, in_flight, done, failed, dead, or None."""
        return self.pipe.status(job_id)

    def failed_jobs(
        self, name: str | None = None, status: str | None = None
    ) -> list[dict[str, Any]]:
        """The failed and dead jobs kept to re-send: see `Pipe.failed_jobs`."""
        return self.pipe.failed_jobs(name, status)

    def resend(
        self, *ids: str, name: str | None = None, every: bool = False,
        again: bool = False,
    ) -> Resent:  # fmt: skip
        """Send kept jobs again, each at most once: see `Pipe.resend`."""
        return self.pipe.resend(*ids, name=name, every=every, again=again)

    def jobs(
        self, status: str | None = None, name: str | None = None
    ) -> list[dict[str, Any]]:
        """The jobs this process holds, not finished: see `Pipe.jobs`."""
        return self.pipe.jobs(status, name)

    def running(self, limit: int = 20) -> list[dict[str, Any]]:
        """Running jobs with a progress report: see `Pipe.running`."""
        return self.pipe.running(limit)

    def purge(
        self, name: str | None = None, *, every: bool = False, in_flight: bool = False
    ) -> Purged:
        """Cancel a backlog by name: see `Pipe.purge`."""
        return self.pipe.purge(name, every=every, in_flight=in_flight)

    def start(self, app: Flask | None = None) -> Pipe:
        """Start the pipe now (else the first request does) and return it."""
        return self.pipe_for(app)

    def stop(self, app: Flask | None = None, timeout: float | None = None) -> int:
        """Drain (up to DRAIN_TIMEOUT), say DONE, close; returns jobs still owed."""
        state = self._state(app)
        pipe, state.pipe = state.pipe, None
        if pipe is None or not pipe.started:
            return 0
        left = pipe.drain(timeout)
        pipe.close()
        return left

    def forwarding(self) -> Blueprint:
        """GET / and POST /jobs: every request one job, as web.py does (opt-in)."""
        return routes.forwarding_blueprint(self.pipe_for)
