"""Settings that would be ignored: names that are no setting, and what they meant.

A misspelt ``app.config`` key or environment variable (``GREENPIPE_MAX_PENDNG``,
``CONCURENCY``) would otherwise be ignored in silence; `unknown` names each
with the setting it probably meant (difflib), and `report` warns once, or
refuses to start with ``UNKNOWN_SETTINGS=refuse``.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from greenpipe.errors import ConfigError

log = logging.getLogger("greenpipe.config")

PREFIX = "GREENPIPE_"

# GREENPIPE_ names that are not settings: the Flask extension's own app.config
# keys, what the tests and the book-keeping handler read, and the pipe a
# WEB_PROCESSES supervisor gives its children (supervisor.READY_ENV).
EXTENSION_KEYS = frozenset(
    PREFIX + name for name in ("INLINE", "HANDLERS", "PREFIX", "ROUTES", "OPS_ROUTES")
)
OTHER_VARIABLES = frozenset(
    PREFIX + name for name in ("HIDE_TOOLS", "READY_FD", "RECORD_DIR", "SLEEP")
)
_CLOSE = 0.75  # difflib ratio from which an unknown name "probably meant" a setting
_warned: set[str] = set()  # names warned about in this process (warned once each)


def unknown(
    mine: Sequence[str],
    known: Collection[str],
    environ: Mapping[str, str],
    app_config: Mapping[str, Any],
) -> list[str]:
    """What would be ignored, each with the setting it probably meant.

    Every ``GREENPIPE_*`` key of `app_config` and of `environ` that is no
    setting, and a bare environment variable that is not one but is close to
    one of this program's settings (``CONCURENCY``, ``JOURNAL``). Settings of
    the other program (``CONCURRENCY`` seen by the web) are `known`, not
    warned about: honcho gives every process the same environment. `mine`:
    this program's settings, upper case.
    """
    problems = []
    for key in app_config:
        if not isinstance(key, str) or not key.startswith(PREFIX):
            continue
        name = key[len(PREFIX) :]
        if key in EXTENSION_KEYS or name in mine:
            continue
        if name in known:
            problems.append(
                f"app.config[{key!r}] is a setting of greenpipe worker, which "
                "does not read app.config: it is ignored; give the worker "
                f"--{name.lower().replace('_', '-')} or {name} in its environment"
            )
            continue
        problems.append(f"app.config[{key!r}] is not a setting: it is ignored"
                        + _meant(name, mine, PREFIX))  # fmt: skip
    for variable in environ:
        if variable in OTHER_VARIABLES or variable in EXTENSION_KEYS:
            continue
        if variable.startswith(PREFIX):
            name = variable[len(PREFIX) :]
            if name not in known:
                problems.append(
                    f"environment variable {variable} is not a setting: it is "
                    f"ignored{_meant(name, mine, PREFIX)}"
                )
        elif variable.isupper() and variable not in known:
            close = difflib.get_close_matches(variable, mine, 3, _CLOSE)
            if close:
                problems.append(
                    f"environment variable {variable} is not a setting: it is "
                    f"ignored; did you mean {' or '.join(close)}?"
                )
    return problems


def _meant(name: str, choices: Sequence[str], prefix: str) -> str:
    close = difflib.get_close_matches(name, choices, 3, _CLOSE)
    if not close:
        return "; see --help for the settings"
    return "; did you mean " + " or ".join(prefix + c for c in close) + "?"


def report(problems: list[str], refuse: bool) -> None:
    """Warn once per problem, or with `refuse` (UNKNOWN_SETTINGS) raise."""
    if problems and refuse:
        raise ConfigError(
            "; ".join(problems) + " (UNKNOWN_SETTINGS=refuse: fix or unset them)"
        )
    for problem in problems:
        if problem not in _warned:
            _warned.add(problem)
            log.warning("%s (UNKNOWN_SETTINGS=refuse stops instead)", problem)
