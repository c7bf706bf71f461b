"""The HTTP side as Flask pieces: blueprints, JSON errors, and web.py's app.

`forwarding_blueprint` turns every GET / and POST /jobs into one job;
`ops_blueprint` serves /healthz and /jobs/<id>, `operator_blueprint` /stats
and /metrics (the operator's, gated by `operator_only`); `json_errors` makes
every error ``{"error": ..., "detail": ...}`` naming what was wrong and what
to do, never a traceback. `create_app(pipe, settings)` assembles them
around a given pipe (a `PipeLike`), so tests can pass a fake.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any, Protocol

from flask import Blueprint, Flask, Response, request
from werkzeug.exceptions import (
    BadRequest,
    HTTPException,
    MethodNotAllowed,
    NotFound,
    RequestEntityTooLarge,
    UnsupportedMediaType,
)

from greenpipe.admission import KEY_RULE, check_key
from greenpipe.config import WebSettings
from greenpipe.errors import BadJob, Unavailable
from greenpipe.httpserver import BodyTimeout
from greenpipe.jobs import (
    QUEUE_RULE,
    Envelope,
    Status,
    issued_at,
    made_by_a_web,
    queue_name,
)
from greenpipe.results import store_path

log = logging.getLogger(__name__)

MAX_CONTENT_TYPE = 1024  # bytes; the job frame has 16 bits for it, this is plenty
ROUTES = (
    "GET /, POST /jobs, GET /jobs/<id>, DELETE /jobs/<id>, GET /healthz and GET /stats"
)
ACTION_HEADER = "X-Greenpipe-Action"  # a custom header: no cross-site form sends it


class PipeLike(Protocol):
    """What the routes ask of a `Pipe` (tests pass a fake with these methods)."""

    def submit(self, job: Envelope, key: str = "") -> Envelope: ...
    def outcome(self, job: Any, timeout: float) -> Any: ...
    def health(self) -> tuple[bool, dict]: ...
    def stats(self) -> dict: ...
    def status(self, job_id: str) -> dict | None: ...
    def owns(self, job_id: str) -> bool: ...


def parse_wait(header: str | None, cap: float) -> float:
    """Seconds from ``Prefer: wait=N`` (RFC 7240), capped; 0 when absent.

    Other preferences are ignored, as the RFC asks; only the first ``wait``
    counts. A ``wait`` that is not a number of seconds is a 400.
    """
    if not header:
        return 0.0
    for preference in header.split(","):
        token, _, value = preference.split(";", 1)[0].partition("=")
        if token.strip().lower() != "wait":
            continue
        text = value.strip().strip('"')
        try:
            seconds = float(text)
        except ValueError:
            seconds = -1.0
        if not (math.isfinite(seconds) and seconds >= 0):
            raise BadRequest(
                f"Prefer: wait={text!r} is not a number of seconds; send e.g. "
                "'Prefer: wait=5', or no Prefer header to get 202 at once"
            )
        return min(seconds, cap)
    return 0.0


def parse_delay(header: str, horizon: float) -> float:
    """``Greenpipe-Delay: N`` (seconds from now): the wall time it waits for, or 400.

    A header of greenpipe's own, not a ``Prefer`` preference (RFC 7240): a
    server may ignore a preference, and a delay must never be ignored. 0 is
    no delay; past MAX_DELAY (`horizon`) or not a number of seconds: 400.
    """
    text = header.strip()
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not (math.isfinite(seconds) and 0 <= seconds <= horizon):
        raise BadRequest(
            f"Greenpipe-Delay: {text[:40]!r} is not a number of seconds from 0 to "
            f"MAX_DELAY ({horizon:g}); send e.g. 'Greenpipe-Delay: 30', or no "
            "header to run the job now"
        )
    return time.time() + seconds if seconds > 0 else 0.0


def parse_queue(header: str) -> bytes:
    """``Greenpipe-Queue: NAME``: the queue a forwarded request goes to, or 400."""
    try:
        return queue_name(header.strip())
    except ValueError:
        raise BadRequest(
            f"Greenpipe-Queue: {header[:80]!r} is not a queue name ({QUEUE_RULE}); "
            "send e.g. 'Greenpipe-Queue: reports', or no header for the default "
            "queue"
        ) from None


def idempotency_key(header: str | None) -> str:
    """The ``Idempotency-Key`` header's key (IETF httpapi draft), or 400.

    A structured-field string ("...") or a bare token, 1-255 printable ASCII.
    """
    if header is None:
        return ""
    key = header.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    try:
        return check_key(key)
    except ValueError:
        raise BadRequest(
            f"Idempotency-Key {header[:80]!r} is not {KEY_RULE}; "
            'send e.g. Idempotency-Key: "8e03978e-40d5-43e8"'
        ) from None


def json_response(
    status: int, payload: dict, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        json.dumps(payload), status=status, headers=headers, mimetype="application/json"
    )


def accepted(job_id: str) -> Response:
    """``202 {"id": ...}``, built without a JSON encoder: it is on every request."""
    return Response(
        b'{"id":"%s"}' % job_id.encode(), status=202, mimetype="application/json"
    )


def json_error(
    status: int, error: str, detail: str, headers: dict[str, str] | None = None
):
    return json_response(status, {"error": error, "detail": detail}, headers)


def _read_body(environ: dict, limit: int) -> bytes:
    """The request body, at most `limit` bytes (MAX_BODY), or 413.

    Read from the server's input directly: Werkzeug's MAX_CONTENT_LENGTH check
    on a chunked body answers 413 for a body of exactly the limit.
    """
    chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
    length = environ.get("CONTENT_LENGTH", "")
    size = limit + 1
    if not chunked:
        if not length:
            return b""
        if not length.isdigit():
            raise BadRequest(f"Content-Length {length!r} is not a number of bytes")
        size = int(length)
        if size > limit:
            raise RequestEntityTooLarge()
    try:
        body = environ["wsgi.input"].read(size)
    except BodyTimeout:
        raise
    except (OSError, ValueError) as exc:  # a broken chunked body, a reset connection
        raise BadRequest(
            f"the request body could not be read ({exc}); send it again"
        ) from None
    if len(body) > limit:
        raise RequestEntityTooLarge()
    if not chunked and len(body) < size:
        raise BadRequest(
            f"the body ended after {len(body)} of {size} bytes (Content-Length); "
            "send it whole"
        )
    return body


def _is_json(content_type: str) -> bool:
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or mime.endswith("+json")


def forwarding_blueprint(
    source: Callable[[], PipeLike], settings: WebSettings | None = None
) -> Blueprint:
    """GET / and POST /jobs: each request becomes one job, named by its path.

    `source` gives the pipe to submit to (resolved per request, so it can be
    started lazily in the serving process); MAX_BODY and MAX_WAIT come from
    `settings`, else from the pipe's own.
    """
    bp = Blueprint("greenpipe_forwarding", __name__)

    @bp.route("/", methods=["GET"])
    @bp.route("/jobs", methods=["POST"])
    def create_job() -> Response:
        environ = request.environ
        pipe = source()
        limits = settings or pipe.settings
        wait = parse_wait(environ.get("HTTP_PREFER"), limits.max_wait)
        encoding = environ.get("HTTP_CONTENT_ENCODING", "").strip().lower()
        if encoding not in ("", "identity"):
            raise UnsupportedMediaType(
                f"Content-Encoding {encoding!r} is not supported; "
                "send the body uncompressed"
            )
        content_type = environ.get("CONTENT_TYPE", "")
        if len(content_type) > MAX_CONTENT_TYPE:
            raise BadRequest(
                f"Content-Type is {len(content_type)} bytes long; at most "
                f"{MAX_CONTENT_TYPE} are accepted"
            )
        body = _read_body(environ, limits.max_body)
        if body and _is_json(content_type):
            try:
                json.loads(body)
            except ValueError as exc:
                raise BadRequest(
                    f"the body is not valid JSON ({exc}) but Content-Type is "
                    f"{content_type!r}; send valid JSON or another Content-Type"
                ) from None
        key = idempotency_key(environ.get("HTTP_IDEMPOTENCY_KEY"))
        job = Envelope.new(
            environ["REQUEST_METHOD"].encode("ascii"),
            environ.get("PATH_INFO", "/").encode("latin-1"),
            environ.get("QUERY_STRING", "").encode("latin-1"),
            content_type.encode("latin-1"),
            body,
            wait=wait > 0,
        )
        delay = environ.get("HTTP_GREENPIPE_DELAY")
        if delay is not None:
            job.not_before = parse_delay(delay, limits.max_delay)
        queue = environ.get("HTTP_GREENPIPE_QUEUE")
        if queue is not None:
            job.queue = parse_queue(queue)
        due = job.not_before
        job = pipe.submit(job, key)
        if not wait or due > time.time() + wait:
            return accepted(job.id)  # due after the wait: nothing to wait for
        return _waited(pipe, job, wait)

    return bp


def shared_port(pipe: Any) -> Response | None:
    """421 for a whole-process view asked on a port several processes share.

    One scrape (or one dashboard) would reach one process at random and read
    as the whole; with greenpipe's server each process answers on its own
    OPS_PORT instead. Under gunicorn, with more than one worker.
    """
    if request.environ.get("greenpipe.own_port"):
        return None
    pid = os.getpid()
    if getattr(pipe.settings, "reuse_port", False):
        where = (
            "Ask each process on its own port: set GREENPIPE_OPS_PORT (the web's "
            "log names each process's port)"
        )
    elif getattr(pipe, "siblings", None) is not None and pipe.siblings.count() > 1:
        where = (
            "Under gunicorn, each worker's figures are its own and no worker has "
            "a port of its own: run with -w 1, or greenpipe's own server "
            "(WEB_PROCESSES and GREENPIPE_OPS_PORT: a port per process)"
        )
    else:
        return None
    return json_error(
        421,
        "misdirected request",
        f"several web processes share this port; this one (pid {pid}) cannot "
        f"speak for the others. {where}",
    )


OPS_ROUTES_OFF = (
    "{path} is the operator's: served on OPS_PORT (each web process's own "
    "port), or on this port with GREENPIPE_OPS_ROUTES = True; an app's public "
    "port leaves it out, so that its clients cannot read it"
)


def operator_only(public: Callable[[], bool]) -> Callable[[], Response | None]:
    """A `before_request` hook: 404 for an operator's route on a public port.

    The operator's routes (/stats, /metrics, /dashboard and its re-send)
    answer on OPS_PORT (``environ["greenpipe.own_port"]``), and on any port
    when `public()` says so (GREENPIPE_OPS_ROUTES; web.py's default).
    """

    def gate() -> Response | None:
        if request.environ.get("greenpipe.own_port") or public():
            return None
        return json_error(404, "not found", OPS_ROUTES_OFF.format(path=request.path))

    return gate


def operator_blueprint(
    source: Callable[[], PipeLike], public: Callable[[], bool] = lambda: True
) -> Blueprint:
    """GET /stats and /metrics: the operator's figures (see `operator_only`)."""
    bp = Blueprint("greenpipe_operator", __name__)
    bp.before_request(operator_only(public))

    @bp.get("/stats")
    def stats() -> Response:
        report = source().stats()
        server = request.environ.get("greenpipe.http")
        if server is not None:  # served by greenpipe's own server
            report["http"] = server.report()
        return json_response(200, report)

    @bp.get("/metrics")
    def metrics() -> Response:
        pipe = source()
        settings = getattr(pipe, "settings", None)
        render = getattr(pipe, "metrics", None)
        if render is None or not getattr(settings, "metrics", True):
            raise NotFound()
        refused = shared_port(pipe)
        if refused is not None:
            return refused
        return Response(render(), mimetype=None, headers={
            "Content-Type": "text/plain; version=0.0.4; charset=utf-8"})  # fmt: skip

    return bp


def ops_blueprint(source: Callable[[], PipeLike]) -> Blueprint:
    """GET /healthz, GET and DELETE /jobs/<id>: the pipe's health, a job's record."""
    bp = Blueprint("greenpipe_ops", __name__)

    @bp.get("/healthz")
    def healthz() -> Response:
        ok, report = source().health()
        return json_response(200 if ok else 503, report)

    @bp.get("/jobs/<job_id>")
    def job_status(job_id: str) -> Response:
        pipe = source()
        found = pipe.status(job_id)
        if found is not None:
            return json_response(200, found)
        return _unknown(pipe, job_id)

    @bp.delete("/jobs/<job_id>")
    def job_cancel(job_id: str) -> Response:
        refused = action_refused("cancel", "cancelling")
        if refused is not None:
            return refused
        pipe = source()
        found = pipe.cancel(job_id)
        if found is None:
            return _unknown(pipe, job_id)
        if found["status"] == Status.CANCELLED:
            return json_response(200, found)
        if found.get("cancelling"):
            return json_response(202, found)  # its worker interrupts it
        return json_response(
            409,
            {
                "error": "already finished",
                "detail": f"job {job_id} is {found['status']}; there is nothing "
                "left to cancel",
                "job": found,
            },
        )

    return bp


def action_refused(action: str, doing: str) -> Response | None:
    """403 unless the request says ``X-Greenpipe-Action: <action>``.

    A custom header: a cross-site form or image cannot send one (a browser
    would need a CORS preflight this web never grants).
    """
    if request.headers.get(ACTION_HEADER) == action:
        return None
    return json_error(
        403,
        "forbidden",
        f"{doing} needs the header {ACTION_HEADER}: {action} (a cross-site form "
        "cannot send it)",
    )


def _unknown(pipe: Any, job_id: str) -> Response:
    """404 for a job this process does not know (421 if another one may).

    A pipe whose `siblings` are set asked the processes sharing this port
    (`greenpipe.siblings`: lookups and cancels) before answering None.
    """
    pid = os.getpid()
    shared = getattr(pipe.settings, "reuse_port", False)
    asked = getattr(pipe, "siblings", None) is not None
    if not pipe.owns(job_id) and shared and not asked:
        # Several processes share this port (REUSE_PORT) and this one could
        # not ask the others: a new connection may reach the one that knows.
        return json_error(
            421,
            "misdirected request",
            f"job {job_id!r} was not accepted by this web process (pid {pid}) "
            "but perhaps by another one sharing this port; ask again on a new "
            "connection (the kernel spreads connections over the processes)",
            {"Retry-After": "0", "Connection": "close"},
        )
    settings = pipe.settings
    ttl = settings.status_ttl
    made = issued_at(job_id)
    # A web's own id only: a scheduler's job is unknown here until it finished
    # (the store), however long it waited or ran: 404, never "gone for good".
    if made is not None and made < time.time() - ttl and made_by_a_web(job_id):
        return json_error(
            410,
            "expired",
            f"no job {job_id!r} now: its id was made at {_utc(made)}, over "
            f"{ttl:g} s ago (STATUS_TTL), so if it was accepted its record has "
            "expired; ask for a job's result within STATUS_TTL, or raise it",
        )
    stored = bool(store_path(settings.result_store, settings.journal_dir))
    kept = (
        f"kept {ttl:g} s, within RESULT_STORE_SIZE"
        if stored
        else f"kept {ttl:g} s, at most {settings.status_keep} jobs, in memory "
        "only: RESULT_STORE is off, so a restart forgets them"
    )
    elsewhere = (
        "" if pipe.owns(job_id) else ", or still waiting or running where "
        "another process (a scheduler) pushed it: the store shows a job once "
        "it finished"
    )  # fmt: skip
    return json_error(
        404,
        "unknown job",
        f"no job {job_id!r} here (pid {pid}): never accepted, or its record was "
        f"pushed out (finished jobs' records are {kept}){elsewhere}",
    )


def _utc(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def unavailable(exc: Unavailable) -> Response:
    """503 with Retry-After and a JSON body: no worker can take the job now."""
    return json_error(
        503, "unavailable", str(exc), {"Retry-After": str(exc.retry_after)}
    )


def bad_job(exc: BadJob) -> Response:
    """413 or 400 for a job refused for its input (`TooLarge`, `BadJob`), as
    web.py answers the same input: the client's error, not a 500."""
    error = "payload too large" if exc.status == 413 else "bad request"
    return json_error(exc.status, error, str(exc))


def json_errors(app: Flask, routes: str = ROUTES) -> None:
    """Answer every error of `app` as ``{"error": ..., "detail": ...}``, never HTML.

    Call it on an app whose clients read JSON (an API): the app's own 404s,
    405s and uncaught exceptions become JSON too. Without it, only greenpipe's
    own errors (`Unavailable`: 503, `TooLarge`: 413, `BadJob`: 400) are JSON
    and the rest stays Flask's HTML.
    """

    app.register_error_handler(Unavailable, unavailable)
    app.register_error_handler(BadJob, bad_job)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
        return json_error(exc.code or 500, exc.name, _detail(exc, app, routes), headers)

    @app.errorhandler(Exception)
    def internal_error(exc: Exception) -> Response:
        view = request.endpoint or "no view"
        log.exception("internal error on %s %s (%s)", request.method, request.path,
                      view)  # fmt: skip
        if (request.blueprint or "").startswith("greenpipe"):  # greenpipe's routes
            detail = f"a bug in greenpipe ({view}); the web's log has the traceback"
        else:  # the app's own view: its bug (or a greenpipe error it let through)
            detail = (
                f"an uncaught {type(exc).__name__} in the app's view {view!r}; "
                "the web's log has the traceback"
            )
        return json_error(500, "internal error", detail)


def create_app(pipe: PipeLike, settings: WebSettings) -> Flask:
    """web.py's app around a given pipe (tests pass a fake)."""
    app = Flask("greenpipe")
    app.config["GREENPIPE_MAX_BODY"] = settings.max_body
    app.register_blueprint(forwarding_blueprint(lambda: pipe, settings))
    app.register_blueprint(ops_blueprint(lambda: pipe))
    app.register_blueprint(operator_blueprint(lambda: pipe))
    json_errors(app)
    return app


def _waited(pipe: PipeLike, job: Any, wait: float) -> Response:
    applied = {"Preference-Applied": f"wait={wait:g}"}
    outcome = pipe.outcome(job, wait)
    if outcome is None or outcome.status is Status.TIMEOUT:
        return json_response(
            504,
            {
                "error": "timed out",
                "detail": f"no worker acknowledged job {job.id} within {wait:g} s; "
                "it is still delivered at least once",
                "id": job.id,
            },
            applied,
        )
    if outcome.status is Status.DONE:
        result = json.loads(outcome.payload) if outcome.payload else None
        return json_response(
            200, {"id": job.id, "worker": outcome.worker, "result": result}, applied
        )
    if outcome.status.waiting:  # a repeated key's job, scheduled or retrying
        return accepted(job.id)  # nothing to wait for, as for a first delayed job
    if outcome.status is Status.UNACKNOWLEDGED:
        detail = "sent at most once to a plain PULL worker, which sends nothing back"
        return json_response(
            202, {"id": job.id, "worker": outcome.worker, "detail": detail}
        )
    error = "handler failed" if outcome.status is Status.FAILED else "given up"
    return json_response(
        502,
        {
            "error": error,
            "detail": outcome.payload.decode("utf-8", "replace"),
            "id": job.id,
            "worker": outcome.worker,
        },
        applied,
    )


def _detail(exc: HTTPException, app: Flask, routes: str) -> str:
    if isinstance(exc, NotFound):
        return f"no route for {request.method} {request.path}; the routes are {routes}"
    if isinstance(exc, MethodNotAllowed):
        allowed = ", ".join(sorted(exc.valid_methods or ()))
        return f"{request.method} is not allowed on {request.path}; use {allowed}"
    if isinstance(exc, RequestEntityTooLarge):
        length = request.content_length
        given = f"Content-Length {length}" if length is not None else "a chunked body"
        return (
            f"the body ({given}) is over MAX_BODY "
            f"({app.config.get('GREENPIPE_MAX_BODY', '?')} bytes); send a "
            "smaller body, or raise MAX_BODY"
        )
    return exc.description or exc.name
