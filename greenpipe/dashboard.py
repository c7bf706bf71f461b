"""/dashboard: a live page of the pipe and its workers, with nothing to build.

The web samples its own counters once a second into a ring of `HISTORY_S`
samples (`History`); the page polls ``/dashboard/data?since=T`` once a second
and gets the samples it has not seen, plus the current picture (workers,
recent failures, dead letters). Rates and latency percentiles are computed
here, in Python, so the page only draws.

Polling, not server-sent events: a stream holds one of MAX_CONNECTIONS and a
greenlet for as long as a tab stays open, and would hold up a stopping web
(which waits for requests to finish); a poll a second costs one short request
per open tab and passes any proxy. Opening the page shows the last five
minutes at once, since the samples are the web's, not the page's.

No job body is shown: failures carry the handler's error text (cut to
200 characters), dead letters their reason. The writes are re-sending one
kept job (here) and, from the page's "Act on many", re-sending kept jobs or
cancelling a backlog by name (`greenpipe.jobroutes`, as ``greenpipe jobs``
calls them). Each asks for a custom header, which a cross-site form or
image cannot send (a browser would need a CORS preflight this web never
grants); a re-send makes one job per kept job whichever process is asked
(the claim is marked in the dead-letter file: `greenpipe.deadletter`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, abort, request, send_from_directory
from werkzeug.exceptions import NotFound

from greenpipe.errors import Unavailable
from greenpipe.routes import (
    action_refused,
    json_error,
    json_response,
    operator_only,
    shared_port,
    unavailable,
)

if TYPE_CHECKING:
    from greenpipe.history import History

INLINE = (
    "jobs run at once in this process (inline mode: app.testing or "
    "GREENPIPE_INLINE), with no worker and nothing flowing to draw; "
    "GET /jobs/<id>, /stats and /metrics answer. Turn TESTING off (with "
    "GREENPIPE_WORKERS) to see the dashboard"
)
RECENT = 20  # failures and dead letters shown
STATIC = Path(__file__).with_name("static")


def page_data(pipe: Any, history: History, since: float) -> dict[str, Any]:
    """What the page shows now, and the samples after `since`."""
    s = pipe.snapshot()
    workers = [
        {
            **worker.report,
            "ready": worker.ready,
            "handled": worker.figures.handled if worker.figures else None,  # all webs
            "heartbeat_age": worker.heartbeat_age,
        }
        for worker in s.workers
    ]
    return {
        "pid": s.pid,
        "name": s.name,
        "time": time.time(),
        "barrier": s.barrier,
        "ready": sum(w["ready"] for w in workers),
        "configured": len(workers),
        "accepted": s.accepted,
        "acked": s.acked,
        "failed": s.failed,
        "resent": s.resent,
        "retried": s.retried,
        "waiting": s.waiting,
        "cancelled": s.cancelled,
        "rejected": s.rejected,
        "dead_lettered": s.dead_lettered,
        "redriven": s.redriven,
        "pending": s.pending,
        "pending_by_queue": s.pending_by_queue,
        "in_flight": s.in_flight,
        "credit": s.credit,
        "workers": workers,
        "failures": [
            {"time": t, "id": job_id, "name": name, "worker": worker, "error": error}
            for t, job_id, worker, error, name in reversed(s.recent_failures)
        ],
        "running": pipe.running(RECENT),
        "dead_letters": pipe.dead_letters(RECENT),
        "dead_letter_file": pipe.dead_letter_file,
        "samples": history.since(since),
        "history_s": history.samples.maxlen,
    }


def dashboard_blueprint(
    source: Callable[[], Any], public: Callable[[], bool] = lambda: True
) -> Blueprint:
    """GET /dashboard, its data and assets; POST to re-send a dead letter.

    The operator's (`operator_only`): on OPS_PORT, or where `public()` says.
    """
    bp = Blueprint("greenpipe_dashboard", __name__)
    bp.before_request(operator_only(public))

    def pipe() -> Any:
        p = source()
        if not getattr(p.settings, "dashboard", False):
            raise NotFound()
        if p.history is None:  # inline mode: nothing flows, nothing is sampled
            abort(json_error(404, "no dashboard in inline mode", INLINE))
        return p

    @bp.get("/dashboard")
    def page() -> Response:
        refused = shared_port(pipe())
        if refused is not None:
            return refused
        return send_from_directory(STATIC, "dashboard.html", max_age=0)

    @bp.get("/dashboard/static/<path:name>")
    def asset(name: str) -> Response:
        pipe()
        return send_from_directory(STATIC, name, max_age=3600)

    @bp.get("/dashboard/data")
    def data() -> Response:
        p = pipe()
        refused = shared_port(p)
        if refused is not None:
            return refused
        try:
            since = float(request.args.get("since", "0"))
        except ValueError:
            since = 0.0
        return json_response(200, page_data(p, p.history, since))

    @bp.post("/dashboard/dead/<job_id>/resend")
    def resend(job_id: str) -> Response:
        p = pipe()
        refused = action_refused(
            "resend", "re-sending (the dashboard's button)"
        ) or shared_port(p)  # one process's page, as the page itself
        if refused is not None:
            return refused
        try:
            job = p.redrive(job_id)
        except KeyError:
            return json_error(
                404,
                "unknown dead letter",
                f"no job {job_id!r} in the dead-letter file "
                f"{p.dead_letter_file}; it may have been moved or "
                "never dead-lettered here",
            )
        except Unavailable as exc:
            return unavailable(exc)
        return json_response(202, {"id": job.id, "resent_from": job_id})

    return bp
