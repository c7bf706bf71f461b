"""greenpipe worker: runs each job it receives, then acknowledges it.

Binds     ROUTER  tcp://HOST:port   HELLO / JOBS / PING in; READY / ACKS / HEARTBEAT out
Run       port=4444 python server.py      (or: python server.py --port 0)
"""

from greenpipe import patch_all

patch_all()  # first statement: gevent's monkey.patch_all(), cheaper to start

from greenpipe import config, entry, worker  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    return entry.main(config.load_worker, worker.run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
