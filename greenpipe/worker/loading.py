"""Loading what a worker runs: the handler (and the Flask app) named by a spec.

A spec is ``package.module:NAME`` (HANDLER, APP); errors name the setting,
the spec and what to try, as `ConfigError`.
"""

from __future__ import annotations

import importlib
import os
import traceback
from typing import Any

from greenpipe import handling
from greenpipe.errors import ConfigError
from greenpipe.jobs import Handler


def load_handler(spec: str, setting: str = "HANDLER") -> Handler:
    """Import ``package.module:NAME`` (a callable or a `Handlers` registry).

    Errors name the setting, the spec and what went wrong.
    """
    if not isinstance(spec, str):  # a list from app.config: one spec only
        raise ConfigError(
            f"{setting}: expected one 'package.module:NAME' string, got "
            f"{type(spec).__name__} {spec!r}; to run several registries in one "
            "process, make one Handlers with every name (handlers.add(name, fn), "
            "or both decorators on a function) and name that"
        )
    module_name, _, attr_path = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"{setting}: cannot import module {module_name!r} from {spec!r} ({exc}); "
            "check the spelling and that it is on PYTHONPATH"
        ) from None
    except (ValueError, TypeError) as exc:  # a declaration refused as it ran
        raise ConfigError(
            f"{setting}: importing {module_name!r} raised {type(exc).__name__} at "
            f"{_user_line(exc)}: {exc}"
        ) from None
    for attr in attr_path.split("."):
        target = getattr(target, attr, None)
        if target is None:
            raise ConfigError(
                f"{setting}: {module_name} has no {attr_path!r} (from {spec!r}); "
                "check the name after the colon"
            )
    if not callable(target):
        raise ConfigError(
            f"{setting}: {spec!r} is a {type(target).__name__}, not a callable"
        )
    return target


def _user_line(exc: BaseException) -> str:
    """file:line of the innermost frame of `exc` outside greenpipe (the user's)."""
    where = "?"
    for frame in traceback.extract_tb(exc.__traceback__):
        if os.sep + "greenpipe" + os.sep not in frame.filename and not (
            frame.filename.startswith("<frozen")
        ):
            where = f"{frame.filename}:{frame.lineno}"
    return where


def in_app_context(handler: Handler, spec: str) -> Handler:
    """Run `handler` inside the Flask app named by `spec` (APP), created once.

    Handlers then use their app's config and extensions (``current_app``).
    """
    app = load_handler(spec, "APP")
    if not hasattr(app, "app_context"):
        raise ConfigError(
            f"APP: {spec!r} is a {type(app).__name__}, not a Flask app; name the "
            "app object, e.g. myapp:app"
        )

    return handling.in_app_context(handler, app)
