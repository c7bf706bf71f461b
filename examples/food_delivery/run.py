"""Food delivery: 1 order desk, 10 couriers, and how the orders were spread.

    python -m examples.food_delivery              # 200 orders
    python -m examples.food_delivery --orders 1000 --couriers 10

Starts one producer and ten consumers as processes, waits for all of them,
and prints each courier's count. The desk waits until all ten couriers are
connected before the first order, so the spread is even from the start.
These messages are transient (plain PUSH/PULL, at most once): a desk that
dies loses the orders still queued in it. The acknowledged bridge (web.py
and server.py) is the one that re-sends.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.food_delivery",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--orders", type=int, default=200)
    parser.add_argument("--couriers", type=int, default=10)
    args = parser.parse_args(argv)
    desk = f"tcp://127.0.0.1:{_free_port()}"
    producer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "examples.food_delivery.producer",
            "--bind",
            desk,
            "--orders",
            str(args.orders),
            "--consumers",
            str(args.couriers),
        ]
    )
    couriers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "examples.food_delivery.consumer",
                "--name",
                f"courier{i + 1}",
                "--connect",
                desk,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(args.couriers)
    ]
    counts = {}
    for courier in couriers:
        out, _ = courier.communicate(timeout=120)
        name, _, rest = out.strip().partition(": delivered ")
        counts[name] = int(rest.split()[0]) if rest else 0
    code = producer.wait(30)
    total = sum(counts.values())
    print("orders per courier: " + ", ".join(f"{n} {c}" for n, c in counts.items()))
    print(
        f"delivered {total} of {args.orders} orders (min {min(counts.values())}, "
        f"max {max(counts.values())})"
    )
    return 0 if code == 0 and total == args.orders else 1


if __name__ == "__main__":
    raise SystemExit(main())
