"""End-to-end latency at a fixed request rate: request sent -> handler started.

    python -m bench.latency --rate 1500 --seconds 10

Starts web.py and three workers (handler bench.stamp:stamp), sends POST /jobs
at --rate requests per second, open loop (a request is sent on schedule
whether or not earlier ones were answered), each body carrying the client's
time.monotonic(), and prints JSON: the handler-start latency percentiles
(sent -> handler started, in the worker) and the HTTP ones (sent -> 202).
The client runs on the same 2 cores, which makes these figures pessimistic.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import gevent.queue  # noqa: E402

from bench.systems import greenpipe  # noqa: E402


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {
        "p50_ms": pick(0.5) * 1000,
        "p99_ms": pick(0.99) * 1000,
        "max_ms": ordered[-1] * 1000,
    }


def drive(
    port: int, rate: float, seconds: float, clients: int = 64
) -> tuple[list[float], int]:
    due: gevent.queue.Queue = gevent.queue.Queue()
    http_latency: list[float] = []
    failures = 0

    def client() -> None:
        nonlocal failures
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while True:
            if due.get() is None:
                return
            sent = time.monotonic()
            conn.request(
                "POST",
                "/jobs",
                body=f"{sent:.6f}",
                headers={"Content-Type": "text/plain"},
            )
            response = conn.getresponse()
            response.read()
            http_latency.append(time.monotonic() - sent)
            failures += response.status != 202

    workers = [gevent.spawn(client) for _ in range(clients)]
    started = time.monotonic()
    issued = 0
    while (elapsed := time.monotonic() - started) < seconds:
        for _ in range(int(elapsed * rate) - issued):
            due.put(1)
            issued += 1
        gevent.sleep(0.002)
    for _ in workers:
        due.put(None)
    gevent.joinall(workers, timeout=30)
    return http_latency, failures


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.latency", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--rate", type=float, default=1500)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as stamps:
        running = greenpipe(handler="bench.stamp:stamp", env={"BENCH_STAMPS": stamps})
        try:
            port = int(running.url.rsplit(":", 1)[1])
            http_latency, failures = drive(port, args.rate, args.seconds)
        finally:
            running.stop()
        handler = [
            float(x) for p in Path(stamps).glob("*.lat") for x in p.read_text().split()
        ]
    print(json.dumps({
        "rate": args.rate, "requests": len(http_latency), "failures": failures,
        "handler_start": percentiles(handler), "http": percentiles(http_latency),
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
