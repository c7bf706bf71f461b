"""greenpipe web: turns every HTTP request into one job for the workers.

Serves    HTTP      http://HOST:port        GET /, POST /jobs, GET /healthz, GET /stats
Connects  DEALER    each of WORKERS         JOBS / PING out; READY / ACKS / HEARTBEAT in
Run       python web.py      (or: python web.py --port 0 --workers 127.0.0.1:4444)
"""

from gevent import monkey

monkey.patch_all()  # first statement: patching late leaves blocking sockets behind

from greenpipe import config, entry, webserver  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    return entry.main(config.load_web, webserver.run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
