"""The ceiling: a bare Flask app on the same gevent server, answering 202 {"id": ...}.

It does what web.py does for HTTP (same server class, same response), minus the
job: no queue, no ZeroMQ. Run: python -m bench.bare --port 0
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import itertools  # noqa: E402
import logging  # noqa: E402
import secrets  # noqa: E402
import signal  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
from flask import Flask  # noqa: E402

from greenpipe.httpserver import make_server  # noqa: E402
from greenpipe.routes import accepted  # noqa: E402

log = logging.getLogger("bench.bare")


def create_app() -> Flask:
    app = Flask("bare")
    prefix = secrets.token_hex(4) + "-"
    seq = itertools.count(1)

    @app.route("/", methods=["GET"])
    @app.route("/jobs", methods=["POST"])
    def create_job():
        return accepted(prefix + format(next(seq), "x"))

    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=4568)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    server = make_server(create_app(), args.host, args.port, 1000, False)
    stopping = gevent.event.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stopping.set)
    log.info("bare: serving http://%s:%d", args.host, server.server_port)
    stopping.wait()
    server.stop(timeout=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
