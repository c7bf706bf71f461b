"""A plain ZeroMQ PULL worker that knows nothing of greenpipe: no gevent, no acks.

    python -m examples.pull_worker --port 5557
    WORKERS=push+tcp://127.0.0.1:5557 .venv/bin/python web.py

This is what the original Ruby workers were: a PULL socket printing what it
gets. web.py feeds it with a plain PUSH when its address in WORKERS starts
with push+ (each job is two frames: the job id and the request body). The
guarantee is weaker than greenpipe's own workers: at most once, and what sits
in buffers when this process dies is lost. Anything that can bind a ZeroMQ
PULL socket, in any language, can stand in for it.
"""

import argparse
import signal
import sys

import zmq


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.pull_worker")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5557, help="0: any free port")
    args = parser.parse_args(argv)
    context = zmq.Context()
    sock = context.socket(zmq.PULL)
    sock.linger = 0
    sock.bind(f"tcp://{args.host}:{args.port or '*'}")
    endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    name = f"pull worker :{endpoint.rsplit(':', 1)[1]}"
    stopping = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.append(True))
    print(f"{name}: listening on {endpoint}", file=sys.stderr, flush=True)
    handled = 0
    while not stopping:
        if not sock.poll(200):
            continue
        frames = sock.recv_multipart()
        job_id = frames[0].decode("ascii", "replace")
        body = frames[1] if len(frames) > 1 else b""
        preview = body[:60].decode("utf-8", "replace")
        print(f"{name}: job {job_id} ({len(body)} bytes) {preview}", flush=True)
        handled += 1
    print(f"{name}: stopped after {handled} jobs", file=sys.stderr, flush=True)
    sock.close()
    context.term()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
