"""GET /failed and POST /failed/resend: the kept failed and dead jobs, over HTTP.

The operator's routes (`operator_only`: on OPS_PORT, or on the app's port
with GREENPIPE_OPS_ROUTES), what ``greenpipe jobs`` calls. Both read the
dead-letter file, which every process of a web shares, so any process
answers for all: no 421 on a shared port. A re-send asks for the custom
header ``X-Greenpipe-Action: resend`` (a cross-site form cannot send it) and
makes each job at most once, whichever process is asked and however often.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, request

from greenpipe.errors import Unavailable
from greenpipe.routes import (
    action_refused,
    json_error,
    json_response,
    operator_only,
    unavailable,
)

LIMIT = 1000  # records listed by default: the newest
STATUSES = ("failed", "dead")


def failed_blueprint(
    source: Callable[[], Any], public: Callable[[], bool] = lambda: True
) -> Blueprint:
    """The kept jobs: list (``?name=&status=&limit=``) and re-send."""
    bp = Blueprint("greenpipe_failed", __name__)
    bp.before_request(operator_only(public))

    @bp.get("/failed")
    def listing() -> Response:
        pipe = source()
        status = request.args.get("status") or None
        if status is not None and status not in STATUSES:
            return json_error(
                400, "bad status",
                f"status={status!r} is not one of {', '.join(STATUSES)}; leave it "
                "out to list both",
            )  # fmt: skip
        text = request.args.get("limit", str(LIMIT))
        if not text.isdigit() or int(text) < 1:
            return json_error(
                400, "bad limit",
                f"limit={text!r} is not a whole number >= 1; the default is {LIMIT}",
            )  # fmt: skip
        try:
            jobs = pipe.failed_jobs(request.args.get("name"), status)
        except OSError as exc:
            return _unreadable(pipe, exc)
        limit = int(text)
        return json_response(200, {
            "file": pipe.dead_letter_file,
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
        if done.refused and not (done.sent or done.already):
            return json_response(503, {
                "error": "service unavailable",
                "detail": "nothing was re-sent: " + next(iter(done.refused.values())),
                **answer,
            }, {"Retry-After": "1"})  # fmt: skip
        return json_response(200, answer)

    return bp


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
