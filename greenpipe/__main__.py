"""greenpipe's command line: ``greenpipe web``, ``worker``, ``schedule`` and ``keys``.

The same programs as web.py and server.py, with the same flags and settings,
for an installed greenpipe (``pip install .``): ``greenpipe worker --port 4444``,
``greenpipe web``, or ``python -m greenpipe web``; and the one scheduler of
periodic jobs, ``greenpipe schedule --handler myapp.jobs:handlers``.
"""

from gevent import monkey

monkey.patch_all()  # first statement: patching late leaves blocking sockets behind

import functools  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402

from greenpipe import __version__, config, entry, serving, worker  # noqa: E402

USAGE = """usage: greenpipe {web,worker,schedule,keys} [--help] [flags]
       greenpipe --version

commands:
  web            serve HTTP and feed the workers (as python web.py)
  worker         run jobs from the webs that connect (as port=4444 python server.py)
  schedule       push the periodic jobs of --handler once per tick (one per set
                 of workers; its own journal, .greenpipe-schedule)
  keys DIR NAME  write a CURVE keypair: DIR/NAME.key, DIR/NAME.key_secret (0600)

greenpipe COMMAND --help lists a command's flags and settings.
"""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command = args.pop(0) if args else ""
    if command == "web":
        load_web = functools.partial(config.load_web, prog="greenpipe web")
        return entry.main(load_web, serving.run, args)
    if command == "worker":
        load_worker = functools.partial(config.load_worker, prog="greenpipe worker")
        return entry.main(load_worker, worker.run, args)
    if command == "schedule":
        from greenpipe import scheduler

        load = functools.partial(scheduler.load_schedule, prog="greenpipe schedule")
        return entry.main(load, scheduler.run, args)
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
        USAGE + "\ngreenpipe: expected 'web', 'worker', 'schedule' or 'keys', got "
        f"{command!r}\n"
    )
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
