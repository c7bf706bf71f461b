"""The operator's routes over many jobs: the kept ones, and the backlog.

``GET /failed`` and ``POST /failed/resend``: the failed and dead jobs kept
in the dead-letter file, which every process of a web shares, so any
process answers for all (no 421 on a shared port). A re-send makes each job
at most once, whichever process is asked and however often.

``GET /backlog`` and ``POST /backlog/purge``: the jobs this process holds
(queued, scheduled, retrying, in flight), and cancelling them by name. A
process's own: a port several processes share answers 421 (ask each on its
OPS_PORT).

All are the operator's (`operator_only`: on OPS_PORT, or on the app's port
with GREENPIPE_OPS_ROUTES), what ``greenpipe jobs`` calls; a write asks for
the custom header ``X-Greenpipe-Action`` (a cross-site form cannot send it).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, request

from greenpipe.errors import Unavailable
from greenpipe.journal.files import offload
from greenpipe.routes import (
    action_refused,
    json_error,
    json_response,
    operator_only,
    shared_port,
    unavailable,
)

LIMIT = 1000  # records listed by default: the newest
STATUSES = ("failed", "dead")


def jobs_blueprint(
    source: Callable[[], Any], public: Callable[[], bool] = lambda: True
) -> Blueprint:
    """The kept jobs (list, re-send) and the backlog (list, purge)."""
    bp = Blueprint("greenpipe_jobs", __name__)
    bp.before_request(operator_only(public))
    _kept_routes(bp, source)
    _backlog_routes(bp, source)
    return bp


def _kept_routes(bp: Blueprint, source: Callable[[], Any]) -> None:
    """GET /failed, POST /failed/resend: every process's, from the shared file."""

    @bp.get("/failed")
    def listing() -> Response:
        pipe = source()
        odd = _unknown_args({"name", "status", "limit"})
        if odd is not None:
            return odd
        status = request.args.get("status") or None
        if status is not None and status not in STATUSES:
            return json_error(
                400, "bad status",
                f"status={status!r} is not one of {', '.join(STATUSES)}; leave it "
                "out to list both",
            )  # fmt: skip
        limit = _limit()
        if isinstance(limit, Response):
            return limit
        try:  # in the pool: a big file parses for long
            jobs = _pooled(pipe.failed_jobs, request.args.get("name"), status)
        except OSError as exc:
            return _unreadable(pipe, exc)
        return json_response(200, {
            "file": os.path.abspath(pipe.dead_letter_file),
            "total": len(jobs),
            "jobs": jobs[-limit:],  # the newest, oldest first
        })  # fmt: skip

    @bp.post("/failed/resend")
    def resend() -> Response:
        refused = action_refused("resend", "re-sending kept jobs")
        if refused is not None:
            return refused
        pipe = source()
        asked = request.get_json(silent=True)
        try:
            ids, name, every, again = _asked(asked)
            done = pipe.resend(*ids, name=name, every=every, again=again)
        except ValueError as exc:
            return json_error(400, "bad re-send", str(exc))
        except OSError as exc:
            return _unreadable(pipe, exc)
        except Unavailable as exc:
            return unavailable(exc)
        answer = done.as_dict()
        if done.refused and not done.sent:
            return json_response(503, {
                "error": "service unavailable",
                "detail": "nothing was re-sent: " + next(iter(done.refused.values())),
                **answer,
            }, {"Retry-After": "1"})  # fmt: skip
        return json_response(200, answer)


def _backlog_routes(bp: Blueprint, source: Callable[[], Any]) -> None:
    """GET /backlog, POST /backlog/purge: this process's own (421 if shared)."""

    @bp.get("/backlog")
    def backlog() -> Response:
        pipe = source()
        refused = shared_port(pipe) or _unknown_args({"name", "status", "limit"})
        if refused is not None:
            return refused
        limit = _limit()
        if isinstance(limit, Response):
            return limit
        try:
            jobs = pipe.jobs(
                request.args.get("status") or None, request.args.get("name")
            )
        except ValueError as exc:
            return json_error(400, "bad status", str(exc))
        return json_response(200, {
            "pid": os.getpid(),
            "total": len(jobs),
            "jobs": jobs[:limit],  # the next to go first
        })  # fmt: skip

    @bp.post("/backlog/purge")
    def purge() -> Response:
        refused = action_refused("purge", "purging a backlog")
        if refused is not None:
            return refused
        pipe = source()
        refused = shared_port(pipe)
        if refused is not None:
            return refused
        asked = request.get_json(silent=True)
        try:
            name, every, in_flight = _purge_asked(asked)
            done = pipe.purge(name, every=every, in_flight=in_flight)
        except ValueError as exc:
            return json_error(400, "bad purge", str(exc))
        answer = done.as_dict()
        if done.refused and not done.cancelled:
            return json_response(503, {
                "error": "service unavailable",
                "detail": "nothing was cancelled: " + next(iter(done.refused.values())),
                **answer,
            }, {"Retry-After": "1"})  # fmt: skip
        return json_response(200, answer)


def _unknown_args(known: set[str]) -> Response | None:
    """400 naming a query parameter the route does not read (a typo filters
    nothing, silently, otherwise)."""
    odd = sorted(set(request.args) - known)
    if not odd:
        return None
    return json_error(
        400, "unknown parameter",
        f"{request.path} reads no {', '.join(map(repr, odd))}; its parameters "
        f"are {', '.join(sorted(known))}",
    )  # fmt: skip


def _pooled(function: Callable[..., Any], *args: Any) -> Any:
    """`function(*args)` in gevent's thread pool; its OSError raised here."""

    def run() -> tuple[Any, OSError | None]:
        try:
            return function(*args), None
        except OSError as exc:  # a value: raised in the pool, gevent prints it
            return None, exc

    value, error = offload(run)
    if error is not None:
        raise error
    return value


def _limit() -> int | Response:
    text = request.args.get("limit", str(LIMIT))
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        return json_error(
            400, "bad limit",
            f"limit={text!r} is not a whole number >= 1; the default is {LIMIT}",
        )  # fmt: skip
    return int(text)


def _purge_asked(asked: Any) -> tuple[str | None, bool, bool]:
    """(name, every, in_flight) from a purge's JSON body, or ValueError."""
    if not isinstance(asked, dict):
        raise ValueError(
            'the body is not a JSON object; send e.g. {"name": "resize"} or '
            '{"every": true}, with Content-Type: application/json'
        )
    unknown = sorted(set(asked) - {"name", "every", "in_flight"})
    if unknown:
        raise ValueError(
            f"unknown field(s) {', '.join(map(repr, unknown))}; the fields are "
            "name, every and in_flight"
        )
    name = asked.get("name")
    every, in_flight = asked.get("every", False), asked.get("in_flight", False)
    if name is not None and not isinstance(name, str):
        raise ValueError(f"name must be a job name (a string), got {name!r}")
    for flag, value in (("every", every), ("in_flight", in_flight)):
        if not isinstance(value, bool):
            raise ValueError(f"{flag} must be true or false, got {value!r}")
    return name, every, in_flight


def _asked(asked: Any) -> tuple[list[str], str | None, bool, bool]:
    """(ids, name, every, again) from a re-send's JSON body, or ValueError."""
    if not isinstance(asked, dict):
        raise ValueError(
            'the body is not a JSON object; send e.g. {"ids": ["<job id>"]}, '
            '{"name": "resize"} or {"every": true}, with Content-Type: '
            "application/json"
        )
    unknown = sorted(set(asked) - {"ids", "name", "every", "again"})
    if unknown:
        raise ValueError(
            f"unknown field(s) {', '.join(map(repr, unknown))}; the fields are "
            "ids, name, every and again"
        )
    ids = asked.get("ids", [])
    name = asked.get("name")
    every, again = asked.get("every", False), asked.get("again", False)
    if not isinstance(ids, list):
        raise ValueError(f"ids must be a list of job ids, got {ids!r}")
    if name is not None and not isinstance(name, str):
        raise ValueError(f"name must be a job name (a string), got {name!r}")
    for flag, value in (("every", every), ("again", again)):
        if not isinstance(value, bool):
            raise ValueError(f"{flag} must be true or false, got {value!r}")
    return ids, name, every, again


def _unreadable(pipe: Any, exc: OSError) -> Response:
    return json_error(
        500, "dead-letter file unreadable",
        f"cannot read {pipe.dead_letter_file} ({exc}); check its permissions, "
        "or DEAD_LETTER",
    )  # fmt: skip
