"""greenpipe's command line: ``greenpipe web``, ``worker``, ``schedule``, ``jobs``
and ``keys``.

The same programs as web.py and server.py, with the same flags and settings,
for an installed greenpipe (``pip install .``): ``greenpipe worker --port 4444``,
``greenpipe web``, or ``python -m greenpipe web``; and the one scheduler of
periodic jobs, ``greenpipe schedule --handler myapp.jobs:handlers``.
"""

from greenpipe import patch_all

patch_all()  # first statement: gevent's monkey.patch_all(), cheaper to start

import functools  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

from greenpipe import __version__, config, entry, serving, worker  # noqa: E402
from greenpipe.errors import ConfigError  # noqa: E402

USAGE = """usage: greenpipe {web,worker,schedule,jobs,keys} [--help] [flags]
       greenpipe --version

commands:
  web            serve HTTP and feed the workers (as python web.py; with
                 --app myapp:app, your app, as serve(app) runs it)
  worker         run jobs from the webs that connect (as port=4444 python server.py)
  schedule       push the periodic jobs of --handler once per tick (one per set
                 of workers; its own journal, .greenpipe-schedule)
  jobs           act on many jobs of a running web: jobs failed, jobs resend
                 (the failed and dead it keeps, each re-sent at most once);
                 jobs list, jobs purge (a process's backlog, with progress)
  keys DIR NAME  write a CURVE keypair: DIR/NAME.key, DIR/NAME.key_secret (0600)

greenpipe COMMAND --help lists a command's flags and settings.
"""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command = args.pop(0) if args else ""
    if command == "web":
        return web(args)
    if command == "worker":
        load_worker = functools.partial(config.load_worker, prog="greenpipe worker")
        return entry.main(load_worker, worker.run, args)
    if command == "schedule":
        from greenpipe import scheduler

        load = functools.partial(scheduler.load_schedule, prog="greenpipe schedule")
        return entry.main(load, scheduler.run, args)
    if command == "jobs":
        from greenpipe.jobscli import main as jobs_main

        return jobs_main(args)
    if command == "keys":
        from greenpipe.curve import keys_main

        return keys_main(args)
    if command in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0
    if command in ("-V", "--version"):
        sys.stdout.write(f"greenpipe {__version__}\n")
        return 0
    sys.stderr.write(
        USAGE + "\ngreenpipe: expected 'web', 'worker', 'schedule', 'jobs' or "
        f"'keys', got {command!r}\n"
    )
    return 2


def web(argv: Sequence[str]) -> int:
    """greenpipe web: greenpipe's own app, or ``--app``'s as ``serve(app)`` runs it.

    With ``--app`` (or APP) the app is imported first, then the settings are
    read again with its ``app.config`` (flags over app.config over the
    environment, as for ``serve(app)``).
    """
    apps: list[Any] = []

    def load(args: Sequence[str] | None) -> config.WebSettings:
        spec = config.app_spec(args)
        if not spec:
            return config.load_web(args, prog="greenpipe web")
        app: Any = worker.load_handler(spec, "APP")
        if not hasattr(app, "app_context"):
            raise ConfigError(
                f"APP: {spec!r} is a {type(app).__name__}, not a Flask app; name "
                "the app object, e.g. myapp:app"
            )
        apps.append(app)
        return config.load_web(args, os.environ, app.config, "greenpipe web")

    return entry.main(load, lambda s: serving.run(s, apps[-1] if apps else None), argv)


if __name__ == "__main__":
    raise SystemExit(main())
