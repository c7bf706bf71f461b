"""The job types: what a handler receives (`Job`), what the web holds (`Envelope`),
and what became of it (`Outcome`, `Status`). The bottom of the import graph.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from enum import StrEnum
from numbers import Real
from typing import Any, NamedTuple
from urllib.parse import parse_qs

import gevent.event

WANTS_REPLY = 0x01  # job flag: someone waits for the result (Prefer: wait)
ID_BYTES = 16  # random bytes in a job id, after its prefix and time (128 bits)
_HEX = "0123456789abcdef"
ID_TIME = 8  # hex digits of the second a job id was made (Unix time, 32 bits)
MAX_NOTE = 200  # bytes of UTF-8 a progress note keeps (longer ones are cut)
DEFAULT_QUEUE = b"default"  # the queue of a job pushed without one
QUEUE_RULE = "1-64 characters of A-Z a-z 0-9 _ . -"
_QUEUE = re.compile(rb"[A-Za-z0-9_.-]{1,64}")


def queue_name(value: object) -> bytes:
    """A queue's name as jobs and READY carry it, or ValueError naming the value."""
    if isinstance(value, str):
        raw = value.encode("utf-8", "surrogatepass")
        if _QUEUE.fullmatch(raw):
            return raw
    raise ValueError(f"queue {value!r} is not {QUEUE_RULE}; e.g. 'reports'")


def new_job_id(prefix: str) -> str:
    """`prefix` (the accepting process's, ending in "-"), the Unix second as 8
    hex digits, then 128 random bits as 32 hex digits.

    Unguessable: a client holding one id learns nothing of another job's (an
    id names a job's result and its cancel). A fixed length after the prefix
    (ab counts a response of another length as failed). The time tells an id
    whose record expired from one never made: `issued_at`.
    """
    return f"{prefix}{int(time.time()):08x}{os.urandom(ID_BYTES).hex()}"


def made_by_a_web(job_id: str) -> bool:
    """True if `job_id` has a web process's prefix (8 hex digits), not one of
    a scheduler's ("s" before them) or of inline mode."""
    prefix = job_id.partition("-")[0]
    return len(prefix) == 8 and not prefix.strip(_HEX)


def issued_at(job_id: str) -> float | None:
    """The Unix second `job_id` was made, or None for an id of another shape
    (an older greenpipe's, 32 hex digits with no time, or not an id at all)."""
    tail = job_id.rpartition("-")[2]
    if len(tail) != ID_TIME + 2 * ID_BYTES or tail.strip(_HEX):
        return None
    return float(int(tail[:ID_TIME], 16))


class Status(StrEnum):
    """What became of a job, as far as the web knows: the one vocabulary.

    `GET /jobs/<id>`, ``pipe.status()`` and the `Outcome` of ``push(wait=)``
    all use these words. ``Status.OK`` is another name for ``DONE``.
    """

    QUEUED = "queued"  # accepted, waiting for a worker with credit
    IN_FLIGHT = "in_flight"  # sent to a worker, not yet acknowledged
    SCHEDULED = "scheduled"  # pushed with a delay: waiting for its time
    RETRYING = "retrying"  # its handler failed; waiting out its backoff
    DONE = "done"  # the handler returned
    FAILED = "failed"  # the handler raised, or ran past its time limit
    DEAD = "dead"  # given up on: MAX_DELIVERIES deliveries, or its last retry failed
    CANCELLED = "cancelled"  # cancelled (pipe.cancel, DELETE /jobs/<id>)
    UNACKNOWLEDGED = "unacknowledged"  # handed to a plain PULL worker: at most once
    TIMEOUT = "timeout"  # nothing came back within the wait (still delivered)
    OK = "done"  # an alias of DONE (the name greenpipe 0.1 used)

    @property
    def finished(self) -> bool:
        """Nothing more will happen to a job in this state: its record is final."""
        return self in FINISHED

    @property
    def waiting(self) -> bool:
        """Held by the web until a time: a delay (scheduled) or a retry's backoff."""
        return self in WAITING


# Queued and in flight are neither: the job moves on by itself. TIMEOUT is an
# outcome of waiting for a job (it is still delivered), not a state of one.
FINISHED = frozenset({Status.DONE, Status.FAILED, Status.DEAD, Status.CANCELLED,
                      Status.UNACKNOWLEDGED})  # fmt: skip
WAITING = frozenset({Status.SCHEDULED, Status.RETRYING})


class Progress(NamedTuple):
    """How far a running job says it is: ``job.progress(done, total, note)``.

    `at` is the Unix second the web heard it (the worker's report, carried by
    its next heartbeat). `total` is None when the handler gave none.
    """

    done: float
    total: float | None
    note: str
    at: float

    def answer(self) -> dict[str, Any]:
        """As GET /jobs/<id> and the dashboard show it."""
        return {"done": _number(self.done), "total": _number(self.total),
                "note": self.note, "at": round(self.at, 3)}  # fmt: skip


def _number(value: float | None) -> float | int | None:
    """3 rather than 3.0 in an answer: a count given as an int reads as one."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


_NUMBER = (int, float)
# The largest double: an int past it (10**400) passes `< inf` but cannot be
# packed; the first line refuses it, the slow path says why.
_FAR = sys.float_info.max


def check_progress(done: Any, total: Any, note: Any) -> tuple[float, float, str]:
    """`job.progress` arguments as the worker keeps them: (done, total, note),
    total 0 for none, the note cut to MAX_NOTE bytes of UTF-8 on a character
    boundary (and made encodable). The careful path: `Job.progress` takes
    plain numbers and a short ASCII note without calling it.

    Raises TypeError or ValueError naming the offending value: a handler's
    mistake is its own, raised where it called.
    """
    numbers = []
    for what, value in (("done", done), ("total", total)):
        if value is None and what == "total":
            numbers.append(0.0)
            continue
        if isinstance(value, bool) or not isinstance(value, Real | Decimal):
            raise TypeError(
                f"job.progress({what}={value!r}): give a number "
                f"(how many steps are {what if what == 'done' else 'there in all'})"
            )
        try:  # a NumPy int or float32 too: what travels is a double
            number = float(value)
        except (OverflowError, ValueError):
            number = math.inf
        if not math.isfinite(number) or number < 0 or (what == "total" and not number):
            bound = "> 0 (or None: unknown)" if what == "total" else ">= 0"
            raise ValueError(
                f"job.progress({what}={_short(value)}): must be {bound} and finite "
                "(a double)"
            )
        numbers.append(number)
    if not isinstance(note, str):
        raise TypeError(f"job.progress(note={note!r}): give a str, e.g. 'page 3'")
    raw = note.encode("utf-8", "replace")[:MAX_NOTE]
    return numbers[0], numbers[1], raw.decode("utf-8", "ignore")


def _short(value: Any) -> str:
    """A value as an error shows it: a 400-digit int cut to its first digits."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}... ({len(text)} characters)"


class Outcome(NamedTuple):
    """What became of a job someone waits for (``push(..., wait=N)``, Prefer: wait)."""

    worker: str
    status: Status
    payload: bytes  # the handler's JSON result, or an error text
    id: str = ""

    @property
    def result(self) -> Any:
        """The handler's return value (None if it returned nothing or failed)."""
        if self.status is Status.OK and self.payload:
            return json.loads(self.payload)
        return None

    @property
    def error(self) -> str:
        """Why it failed, was given up on or cancelled ("" when it was not)."""
        if self.status in (Status.FAILED, Status.DEAD, Status.CANCELLED):
            return self.payload.decode("utf-8", "replace")
        return ""


class Envelope:
    """A job as the web holds it: the request's parts, and where it has been."""

    __slots__ = ("key", "id", "attempt", "method", "path", "query", "content_type",
                 "body", "flags", "sent_at", "reply", "name", "segment",
                 "accepted_at", "suspect", "retries", "deliveries", "not_before",
                 "errors", "cancelling", "progress", "queue")  # fmt: skip

    def __init__(
        self,
        job_id: str,
        method: bytes,
        path: bytes,
        query: bytes,
        content_type: bytes,
        body: bytes,
        reply: gevent.event.AsyncResult[Any] | None = None,
        name: bytes = b"",
    ) -> None:
        self.id = job_id
        self.name = name  # empty: a forwarded request, named by its path
        self.segment = -1  # the journal segment it was written to (-1: none)
        self.accepted_at = 0.0  # the dispatcher's clock when it was accepted
        self.key = job_id.encode("ascii")
        self.attempt = 0  # deliveries so far, all runs together
        self.deliveries = 0  # deliveries of this run (MAX_DELIVERIES bounds them)
        self.retries = 0  # handler retries so far (runs after the first)
        self.not_before = 0.0  # wall time it waits for (a retry's backoff); 0: none
        self.errors: Sequence[str] = ()  # why its runs failed, the last few
        self.cancelling = False  # cancelled while a worker runs it
        self.progress: Progress | None = None  # its run's last report, if any
        self.queue = DEFAULT_QUEUE  # only workers listening on it take it
        # Taken back from a worker lost without a goodbye: it may be what killed
        # it, so it travels alone (greenpipe.rotation).
        self.suspect = False
        self.method = method
        self.path = path
        self.query = query
        self.content_type = content_type
        self.body = body
        self.flags = WANTS_REPLY if reply is not None else 0
        self.sent_at = 0.0
        self.reply = reply

    @classmethod
    def new(
        cls,
        method: bytes,
        path: bytes,
        query: bytes,
        content_type: bytes,
        body: bytes,
        *,
        wait: bool = False,
        name: bytes = b"",
    ) -> Envelope:
        """A job made at a door (HTTP, ``push``), without an id until admitted.

        `wait`: someone will wait for its outcome (``Prefer: wait``).
        """
        reply: gevent.event.AsyncResult[Any] | None = (
            gevent.event.AsyncResult() if wait else None
        )
        return cls("", method, path, query, content_type, body, reply, name)

    def named(self, job_id: str) -> Envelope:
        """Give the job its id (admission does, once it is accepted); returns it."""
        self.id = job_id
        self.key = job_id.encode("ascii")
        return self

    def resolve(self, worker: str, status: Status, payload: bytes = b"") -> None:
        """Tell whoever waits for this job what became of it (if anyone does)."""
        if self.reply is not None:
            self.reply.set(Outcome(worker, status, payload, self.id))


class Job:
    """A job as a worker's handler sees it.

    ``name`` says which handler of a `Handlers` registry runs it: the name given
    to ``push``, or the path of a forwarded request (``method``, ``path`` and
    ``query`` are empty for a job pushed by name). ``body`` is the raw body;
    ``json()`` parses it (and raises ValueError if it is not JSON). ``attempt``
    counts runs: 1 on first delivery, and one more each time the job runs
    again, after a retry or after the web re-sent it from a lost worker.
    ``retries`` is how many handler retries came before this run (0 at
    first). ``timeout`` is its time limit in seconds (0: none).
    ``progress(done, total, note)`` reports how far it is (`GET /jobs/<id>`).
    """

    __slots__ = ("id", "attempt", "method", "path", "query", "content_type", "body",
                 "timeout", "wants_reply", "raw_id", "worker", "name",
                 "retries", "reported", "_sink")  # fmt: skip

    def __init__(
        self,
        raw_id: bytes,
        attempt: int,
        method: str,
        path: str,
        query: str,
        content_type: str,
        body: bytes,
        timeout: float = 0.0,
        wants_reply: bool = False,
        name: str = "",
        retries: int = 0,
    ) -> None:
        self.raw_id = raw_id
        self.retries = retries
        self.name = name or path  # a forwarded request is named by its path
        self.id = raw_id.decode("ascii")
        self.attempt = attempt
        self.method = method
        self.path = path
        self.query = query
        self.content_type = content_type
        self.body = body
        self.timeout = timeout  # seconds; 0 means no limit
        self.wants_reply = wants_reply
        self.worker = ""  # set by the worker that runs it, e.g. "worker :4444"
        # The last ``progress`` report, as the wire carries it (or None), and
        # where the worker collects reports for its next heartbeat.
        self.reported: tuple[float, float, str] | None = None
        self._sink: dict[bytes, tuple[float, float, str]] | None = None

    def progress(self, done: float, total: float | None = None, note: str = "") -> None:
        """Say how far this job is: `done` of `total` steps (None: unknown),
        with a short `note` (cut to 200 bytes), e.g. ``job.progress(3, 10,
        "page 3")``.

        Cheap to call often: only the last report before each heartbeat
        (HEARTBEAT, 0.5 s) travels to the web, which shows it in
        ``GET /jobs/<id>`` and the dashboard while the job runs, and keeps the
        last one in the job's record once it ends. Bad values raise TypeError
        or ValueError here, in the handler.
        """
        if (type(done) in _NUMBER and 0 <= done <= _FAR and type(note) is str
                and (total is None or (type(total) in _NUMBER and 0 < total <= _FAR))
                and len(note) <= MAX_NOTE and note.isascii()):  # fmt: skip
            report = (done, total or 0, note)  # plain values: a handler's loop
        else:
            report = check_progress(done, total, note)
        self.reported = report
        if self._sink is not None:
            self._sink[self.raw_id] = report

    def report_to(self, sink: dict[bytes, tuple[float, float, str]] | None) -> None:
        """Where `progress` leaves its reports (the worker's, per web); None
        once the run ended, so a late call from a lingering greenlet is kept
        on the job alone."""
        self._sink = sink

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def args(self) -> dict[str, list[str]]:
        """The query string parsed, e.g. ``{"n": ["1"]}``."""
        return parse_qs(self.query)

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.name!r} attempt {self.attempt}>"


# A handler: called once per job in a worker's pool; its return value (JSON)
# travels back in the acknowledgement.
Handler = Callable[[Job], Any]


def unfinished(job: Envelope, status: Status, worker: str = "") -> dict[str, Any]:
    """A job's status answer while it is not finished: the one place it is built.

    Queued, in flight (with its worker), scheduled (``due_at``) or retrying
    (``runs``, ``next_at``, the last ``error``); a finished job's answer is
    its outcome, kept by ``FinishedJobs``. Times are Unix seconds.
    """
    answer: dict[str, Any] = {
        "id": job.id,
        "name": (job.name or job.path).decode("utf-8", "replace"),
        "status": status.value,
    }
    if job.queue != DEFAULT_QUEUE:
        answer["queue"] = job.queue.decode("ascii")
    if status is Status.SCHEDULED:
        answer["due_at"] = round(job.not_before, 3)
        return answer
    if worker:
        answer["worker"] = worker
    if job.progress is not None:
        answer["progress"] = job.progress.answer()
    answer["attempt"] = job.attempt
    if status is Status.RETRYING:
        answer["runs"] = job.retries
        answer["next_at"] = round(job.not_before, 3)
        answer["error"] = job.errors[-1] if job.errors else ""
    return answer
