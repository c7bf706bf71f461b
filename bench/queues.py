"""Flask + Celery and Flask + RQ on Redis, answering the same 202 {"id": ...}.

The web side runs on greenpipe's own gevent server class (same TCP_NODELAY,
same single-write responses) so that only the queue differs:

    python -m bench.queues web celery --port 0 --redis redis://127.0.0.1:6379/0
    python -m bench.queues web rq --port 0 --redis redis://127.0.0.1:6379/0

Workers, started by bench:
    celery -A bench.queues:celery_app worker --pool gevent -c 100 -n w1@bench
    rq worker --url redis://... bench          (RQ's default: a fork per job)

Each job increments a Redis counter per worker, so bench can count what was
handled and how the jobs were spread.
"""

from __future__ import annotations

import os

REDIS_URL = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/0")
HANDLED = "bench:handled"  # a hash: worker name -> jobs handled


def _redis():
    import redis

    return redis.Redis.from_url(REDIS_URL)


# -- Celery ---------------------------------------------------------------------

try:
    from celery import Celery

    celery_app = Celery("bench", broker=REDIS_URL)
    celery_app.conf.update(
        task_ignore_result=True,  # 202 and forget, as greenpipe's GET / does
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )

    @celery_app.task(bind=True, name="bench.noop")
    def celery_noop(self) -> None:
        _counter().hincrby(HANDLED, self.request.hostname or "celery", 1)

except ImportError:  # bench says "skipped" for this system
    celery_app = None

_client = None


def _counter():
    global _client
    if _client is None:
        _client = _redis()
    return _client


# -- RQ -------------------------------------------------------------------------


def rq_noop() -> None:
    from rq import get_current_job

    job = get_current_job()
    name = job.worker_name if job is not None and job.worker_name else "rq"
    _counter().hincrby(HANDLED, name, 1)


# -- the web side ---------------------------------------------------------------


def create_app(kind: str):
    from flask import Flask

    from greenpipe.routes import accepted

    app = Flask(f"bench-{kind}")
    if kind == "celery":

        def enqueue() -> str:
            return celery_noop.delay().id

    else:
        from rq import Queue

        queue = Queue("bench", connection=_redis())

        def enqueue() -> str:
            return queue.enqueue("bench.queues.rq_noop").id  # not __main__.rq_noop

    app.config["accepted"] = 0

    @app.route("/", methods=["GET"])
    def create_job():
        job_id = enqueue()
        app.config["accepted"] += 1
        return accepted(job_id)

    return app


def main(argv: list[str] | None = None) -> int:
    import argparse
    import logging
    import signal

    import gevent
    import gevent.event

    from greenpipe.httpserver import make_server

    parser = argparse.ArgumentParser(prog="python -m bench.queues")
    parser.add_argument("role", choices=["web"])
    parser.add_argument("kind", choices=["celery", "rq"])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    app = create_app(args.kind)
    server = make_server(app, "127.0.0.1", args.port, 1000, False)
    stopping = gevent.event.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stopping.set)
    logging.getLogger("bench").info(
        "%s: serving http://127.0.0.1:%d", args.kind, server.server_port
    )
    stopping.wait()
    server.stop(timeout=1)
    logging.getLogger("bench").info(
        "%s: stopped; accepted %d", args.kind, app.config["accepted"]
    )
    return 0


if __name__ == "__main__":
    from gevent import monkey

    monkey.patch_all()
    raise SystemExit(main())
