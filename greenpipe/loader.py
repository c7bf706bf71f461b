"""How a settings class is read: its flags, app.config, the environment, defaults.

`load_settings` takes the environment it is given (`greenpipe.config` passes
``os.environ``): the one rule for a setting's names at each level, old names
(`ALIASES`) after new ones, and the errors that name value and source.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any, TypeVar

from greenpipe import spelling
from greenpipe.errors import ConfigError
from greenpipe.spelling import PREFIX
from greenpipe.websettings import PipeSettings, WebSettings
from greenpipe.workersettings import WorkerSettings

log = logging.getLogger("greenpipe.config")  # the name operators know its lines by

# Old names still read, each for the setting it became (flag, app.config and
# environment alike); the new name wins at the same level. One warning each.
ALIASES = {"max_attempts": "max_deliveries"}
_warned_aliases: set[object] = set()  # what was warned about once
_S = TypeVar("_S", bound="PipeSettings | WorkerSettings")  # load_settings makes


def env_names(name: str) -> tuple[str, ...]:
    """Environment variables for a setting, strongest first.

    One rule: ``GREENPIPE_<NAME>`` (as in app.config, and what the key tool's
    advice reads like) or the bare ``<NAME>``; the prefixed one wins when both
    are set. ``port`` in lower case (the original setup's spelling) outranks
    ``PORT``, which honcho exports to every process it starts (5000, 5100, …).
    """
    bare = ("port", "PORT") if name == "port" else (name.upper(),)
    return (PREFIX + name.upper(), *bare)


def _lookup(
    name: str,
    flags: Mapping[str, str],
    environ: Mapping[str, str],
    app_config: Mapping[str, Any],
) -> tuple[str | None, str, str]:
    """Return (raw text, where it came from, the name to show in errors).

    A setting's old name (`ALIASES`) is read at each level after its own.
    """
    label = "port" if name == "port" else name.upper()
    names = [name, *(old for old, new in ALIASES.items() if new == name)]
    for each in names:
        if each in flags:
            return flags[each], f"flag --{each.replace('_', '-')}", each.upper()
    for each in names:
        key = PREFIX + each.upper()
        if key in app_config:
            return _text(app_config[key]), f"app.config[{key!r}]", key
    for each in names:
        for env in env_names(each):
            if env in environ:
                return environ[env], f"environment variable {env}", env
    return None, "default", label


def _warn_alias(old: str, source: str) -> None:
    """Once per old name and process: say what it is called now."""
    if old not in _warned_aliases:
        _warned_aliases.add(old)
        log.warning(
            "%s is deprecated: it is %s now (%s); rename it, it means the same",
            old.upper(),
            ALIASES[old].upper(),
            source,
        )


def _setting_names(cls: type) -> list[str]:
    """The settings of `cls`, upper case, and the old names still read."""
    names = [f.name for f in fields(cls)]
    return [n.upper() for n in names + [o for o, n in ALIASES.items() if n in names]]


def _shown_default(f: Any) -> str:
    if f.metadata["shown"]:
        return str(f.metadata["shown"])
    return str(f.default).lower() if isinstance(f.default, bool) else str(f.default)


def _text(value: Any) -> str:
    """app.config values may be typed: True, 3, 2.5, ["127.0.0.1:4444", ...]."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return str(value)


def load_settings(
    cls: type[_S],
    prog: str | None,
    description: str,
    argv: Sequence[str] | None,
    environ: Mapping[str, str],
    app_config: Mapping[str, Any] | None = None,
) -> _S:
    """The settings of `cls` (its fields): flags, app.config, environment, defaults."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        argument_default=argparse.SUPPRESS,
        epilog="Each flag also reads the environment variables named in its help "
        "(GREENPIPE_NAME or NAME; the first wins); flags win over the environment, "
        "which wins over the defaults.",
    )
    for f in fields(cls):
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            metavar=f.name.upper(),
            help=f"{f.metadata['help']} [env {'/'.join(env_names(f.name))}; "
            f"default {_shown_default(f)}]",
        )
        for old in (old for old, new in ALIASES.items() if new == f.name):
            parser.add_argument("--" + old.replace("_", "-"), dest=old,
                                help=argparse.SUPPRESS)  # fmt: skip
    flags = vars(parser.parse_args(argv))
    given: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for f in fields(cls):
        raw, source, label = _lookup(f.name, flags, environ, app_config or {})
        if raw is None:
            continue
        sources[f.name] = source
        used = label.removeprefix(PREFIX).lower()
        if used in ALIASES:
            _warn_alias(used, source)
        try:
            given[f.name] = f.metadata["parse"](raw)
        except ValueError as exc:
            raise ConfigError(
                f"{label}: expected {exc}, got {raw!r} ({source}); fix it, or unset it "
                f"to use the default {_shown_default(f)}"
            ) from None
    _workers_outrank_file(given, sources)
    settings = cls(**given)
    known = set(_setting_names(WebSettings)) | set(_setting_names(WorkerSettings))
    problems = spelling.unknown(_setting_names(cls), known, environ, app_config or {})
    spelling.report(problems, settings.unknown_settings == "refuse")
    return settings


def _rank(source: str) -> int:
    """0 for a flag, 1 for app.config, 2 for the environment: the lower wins."""
    return 0 if source.startswith("flag") else 1 if source.startswith("app") else 2


def _workers_outrank_file(given: dict[str, Any], sources: dict[str, str]) -> None:
    """WORKERS from a stronger level than WORKERS_FILE wins over the file.

    At one level the file wins (it is read "instead of WORKERS"); across
    levels the usual order holds: ``app.config["GREENPIPE_WORKERS"]`` over an
    environment ``WORKERS_FILE``, a ``--workers`` flag over either.
    """
    if "workers" not in sources or not given.get("workers_file"):
        return
    if _rank(sources["workers"]) < _rank(sources["workers_file"]):
        dropped = given.pop("workers_file")
        if ("WORKERS_FILE", dropped) in _warned_aliases:
            return  # settings read twice (greenpipe web --app): said once
        _warned_aliases.add(("WORKERS_FILE", dropped))
        log.warning(
            "WORKERS_FILE=%r (%s) is not read: WORKERS (%s) outranks it; unset "
            "one of them", dropped, sources["workers_file"], sources["workers"],
        )  # fmt: skip


def to_flags(settings: Any) -> list[str]:
    """Flags that load back into the same settings (for child processes)."""
    argv = []
    for f in fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, bool):
            text = "yes" if value else "no"
        elif isinstance(value, tuple):
            text = ",".join(map(str, value))
        else:
            text = str(value)
        argv += ["--" + f.name.replace("_", "-"), text]
    return argv
