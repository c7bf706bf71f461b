"""A plain PULL worker that only counts: the at-most-once bridge's far end in bench.

    python -m bench.pull_counter --port 0

Logs its endpoint, counts [job id, body] messages, and on SIGTERM logs
"handled N jobs" (the same words greenpipe's worker uses) and exits 0.
"""

import argparse
import signal
import sys

import zmq


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.linger = 0
    sock.bind(f"tcp://127.0.0.1:{args.port or '*'}")
    endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    print(f"pull counter: listening on {endpoint}", file=sys.stderr, flush=True)
    count = 0
    while not stopping:
        if sock.poll(100):
            sock.recv_multipart()
            count += 1
    print(f"pull counter: stopped; handled {count} jobs", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
