"""greenpipe: hand jobs from a gevent Flask app to a pool of ZeroMQ workers.

Round-robin behind a readiness barrier, acknowledged (at least once), bounded.
The public names, importable from ``greenpipe`` directly:

- `Greenpipe`: the Flask extension (``pipe = Greenpipe(app)``; ``pipe.push``)
- `Pipe`: the core, without Flask (``Pipe(workers=[...]).push(...)``)
- `Handlers`: the worker's registry of handlers by job name
- `Job`: what a handler receives; `Receipt`, `Outcome`, `Status`: what
  ``push`` gives back; `Resent`, `Purged`: what ``resend`` and ``purge`` did
- `serve`: run a Flask app with greenpipe as web.py does
- `patch_all`: gevent's ``monkey.patch_all()``, cheaper to start (its plugin
  lookups read once), for a program's first statement
- `Retry`, `JobTimeout`, `Cancelled`: what a handler raises to be run again
  later, and what is thrown into it past its time limit or when cancelled
- `GreenpipeError`, `ConfigError`, `Unavailable`, `UnknownJob`, `BadJob`,
  `TooLarge`: the errors

Importing ``greenpipe`` imports none of them until one is used, so an entry
point can import it before ``gevent.monkey.patch_all()`` without harm.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_WHERE = {
    "Greenpipe": "greenpipe.ext",
    "Pipe": "greenpipe.pipe",
    "Receipt": "greenpipe.pipe",
    "Handlers": "greenpipe.handlers",
    "UnknownJob": "greenpipe.handlers",
    "Job": "greenpipe.jobs",
    "Outcome": "greenpipe.jobs",
    "Status": "greenpipe.jobs",
    "Resent": "greenpipe.resend",
    "Purged": "greenpipe.purge",
    "serve": "greenpipe.serving",
    "patch_all": "greenpipe.boot",
    "Retry": "greenpipe.handling",
    "Cancelled": "greenpipe.handling",
    "JobTimeout": "greenpipe.handling",
    "json_errors": "greenpipe.routes",
    "GreenpipeError": "greenpipe.errors",
    "ConfigError": "greenpipe.errors",
    "Unavailable": "greenpipe.errors",
    "BadJob": "greenpipe.errors",
    "TooLarge": "greenpipe.errors",
}
__all__ = sorted(_WHERE)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports
    from greenpipe.boot import patch_all as patch_all
    from greenpipe.errors import (  # noqa: F401
        BadJob,
        ConfigError,
        GreenpipeError,
        TooLarge,
        Unavailable,
    )
    from greenpipe.ext import Greenpipe  # noqa: F401
    from greenpipe.handlers import Handlers, UnknownJob  # noqa: F401
    from greenpipe.handling import Cancelled, JobTimeout, Retry  # noqa: F401
    from greenpipe.jobs import Job, Outcome, Status  # noqa: F401
    from greenpipe.pipe import Pipe, Receipt  # noqa: F401
    from greenpipe.purge import Purged  # noqa: F401
    from greenpipe.resend import Resent  # noqa: F401
    from greenpipe.routes import json_errors  # noqa: F401
    from greenpipe.serving import serve  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'greenpipe' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
