"""A plain ZeroMQ PULL worker, not greenpipe's: what the original setup ran.

Binds PULL on --host:--port and takes [job id, body] messages (what web.py
sends to a push+tcp:// worker). Like greenpipe's worker it runs each job in its
own greenlet, honouring {"sleep": s} in the body, then records the id as
tests.handlers:record does. No acknowledgements: what sits in its buffers or
its greenlets when it dies is gone.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import zmq.green as zmq  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.linger = 0
    sock.bind(f"tcp://{args.host}:{args.port or '*'}")
    endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    port = endpoint.rsplit(":", 1)[1]
    path = os.path.join(os.environ.get("GREENPIPE_RECORD_DIR", "."), f"{port}.ids")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def handle(job_id: bytes, body: bytes) -> None:
        try:
            seconds = json.loads(body).get("sleep", 0) if body[:1] == b"{" else 0
        except ValueError:
            seconds = 0
        if seconds:
            gevent.sleep(seconds)
        os.write(fd, job_id + b" 1\n")

    def receive() -> None:
        while True:
            job_id, body = sock.recv_multipart()
            gevent.spawn(handle, job_id, body)

    receiver = gevent.spawn(receive)
    stopping = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stopping.set)
    print(f"plain PULL worker: listening on {endpoint}", file=sys.stderr, flush=True)
    stopping.wait()
    receiver.kill()
    sock.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
