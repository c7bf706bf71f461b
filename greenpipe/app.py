"""The Flask app: every GET / and POST /jobs becomes one job; errors are JSON.

`create_app(dispatcher, settings)` takes its dispatcher, so tests can pass a
fake. A client can never cause a 500 with a traceback: every error is
``{"error": ..., "detail": ...}`` naming what was wrong and what to do.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any, Protocol

from flask import Flask, Response, request
from werkzeug.exceptions import (
    BadRequest,
    HTTPException,
    MethodNotAllowed,
    NotFound,
    RequestEntityTooLarge,
    UnsupportedMediaType,
)

from greenpipe.config import WebSettings
from greenpipe.errors import Unavailable

log = logging.getLogger(__name__)

MAX_CONTENT_TYPE = 1024  # bytes; the job frame has 16 bits for it, this is plenty
ROUTES = "GET /, POST /jobs, GET /healthz and GET /stats"


class DispatcherLike(Protocol):
    def submit(
        self,
        method: bytes,
        path: bytes,
        query: bytes,
        content_type: bytes,
        body: bytes,
        reply: bool = False,
    ) -> Any: ...
    def outcome(self, job: Any, timeout: float) -> Any: ...
    def health(self) -> tuple[bool, dict]: ...
    def stats(self) -> dict: ...


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


def _error(status: int, error: str, detail: str, headers: dict[str, str] | None = None):
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


def create_app(dispatcher: DispatcherLike, settings: WebSettings) -> Flask:
    app = Flask("greenpipe")

    @app.route("/", methods=["GET"])
    @app.route("/jobs", methods=["POST"])
    def create_job() -> Response:
        environ = request.environ
        wait = parse_wait(environ.get("HTTP_PREFER"), settings.max_wait)
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
        body = _read_body(environ, settings.max_body)
        if body and _is_json(content_type):
            try:
                json.loads(body)
            except ValueError as exc:
                raise BadRequest(
                    f"the body is not valid JSON ({exc}) but Content-Type is "
                    f"{content_type!r}; send valid JSON or another Content-Type"
                ) from None
        job = dispatcher.submit(
            environ["REQUEST_METHOD"].encode("ascii"),
            environ.get("PATH_INFO", "/").encode("latin-1"),
            environ.get("QUERY_STRING", "").encode("latin-1"),
            content_type.encode("latin-1"),
            body,
            reply=wait > 0,
        )
        if not wait:
            return accepted(job.id)
        return _waited(dispatcher, job, wait)

    @app.get("/healthz")
    def healthz() -> Response:
        ok, report = dispatcher.health()
        return json_response(200 if ok else 503, report)

    @app.get("/stats")
    def stats() -> Response:
        return json_response(200, dispatcher.stats())

    @app.errorhandler(Unavailable)
    def unavailable(exc: Unavailable) -> Response:
        return _error(
            503, "unavailable", str(exc), {"Retry-After": str(exc.retry_after)}
        )

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
        return _error(exc.code or 500, exc.name, _detail(exc, settings), headers)

    @app.errorhandler(Exception)
    def internal_error(exc: Exception) -> Response:
        log.exception("internal error on %s %s", request.method, request.path)
        return _error(
            500, "internal error", "a bug in greenpipe; the web's log has the details"
        )

    return app


def _waited(dispatcher: DispatcherLike, job: Any, wait: float) -> Response:
    applied = {"Preference-Applied": f"wait={wait:g}"}
    outcome = dispatcher.outcome(job, wait)
    if outcome is None:
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
    if outcome.status == "ok":
        result = json.loads(outcome.payload) if outcome.payload else None
        return json_response(
            200, {"id": job.id, "worker": outcome.worker, "result": result}, applied
        )
    if outcome.status == "unacknowledged":
        detail = "sent at most once to a plain PULL worker, which sends nothing back"
        return json_response(
            202, {"id": job.id, "worker": outcome.worker, "detail": detail}
        )
    error = "handler failed" if outcome.status == "failed" else "given up"
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


def _detail(exc: HTTPException, settings: WebSettings) -> str:
    if isinstance(exc, NotFound):
        return f"no route for {request.method} {request.path}; the routes are {ROUTES}"
    if isinstance(exc, MethodNotAllowed):
        allowed = ", ".join(sorted(exc.valid_methods or ()))
        return f"{request.method} is not allowed on {request.path}; use {allowed}"
    if isinstance(exc, RequestEntityTooLarge):
        length = request.content_length
        given = f"Content-Length {length}" if length is not None else "a chunked body"
        return (
            f"the body ({given}) is over MAX_BODY ({settings.max_body} bytes); send a "
            "smaller body, or raise MAX_BODY"
        )
    return exc.description or exc.name
