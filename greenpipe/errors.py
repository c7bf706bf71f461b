"""The exceptions greenpipe raises: one base, one subclass per boundary.

No Flask or werkzeug here: a worker process imports this module, and werkzeug
is a third of a worker's start (the HTTP front's `BodyTimeout`, a werkzeug
`RequestTimeout`, lives in `greenpipe.httpserver`).
"""


class GreenpipeError(Exception):
    """Base class: entry points catch this, log it and exit non-zero."""


class ConfigError(GreenpipeError):
    """A setting has a bad value; the message names the setting, value and source."""


class ProtocolError(GreenpipeError):
    """A frame does not follow the greenpipe protocol (dropped, counted, logged)."""


class LinkError(GreenpipeError):
    """A ZeroMQ operation on a link failed for a reason other than "full"."""


class Unavailable(GreenpipeError):
    """The web cannot accept a job now; answered as 503 with Retry-After."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BadJob(GreenpipeError, ValueError):
    """A job's input was refused (an idempotency key that breaks the rule).

    Raised by ``push``; left uncaught in a view, it answers 400 as web.py does
    for the same input. A ValueError too, as ``push`` documents.
    """

    status = 400


class TooLarge(BadJob):
    """A job's body is over MAX_BODY: 413 in a view, as web.py answers."""

    status = 413


class JournalError(GreenpipeError):
    """The journal cannot be written; jobs are refused (503) until it can."""
