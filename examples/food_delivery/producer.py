"""A restaurant's order desk: PUSHes confirmed orders to the couriers.

    python -m examples.food_delivery.producer --bind tcp://127.0.0.1:5600 \\
        --orders 200 --consumers 10

Waits until --consumers couriers are connected (0: don't wait), pushes the
orders round-robin, then one "closed" message per courier, and exits. With
--ledger FILE it appends each order id once it is handed to ZeroMQ: orders
are transient, and the ledger shows what a crash of this process loses.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402

from greenpipe.pushpull import Pusher  # noqa: E402

DISHES = [
    "pad thai",
    "margherita",
    "ramen",
    "falafel wrap",
    "pho",
    "biryani",
    "poke bowl",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="producer", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--bind", default="tcp://127.0.0.1:5600")
    parser.add_argument("--name", default="desk")
    parser.add_argument("--orders", type=int, default=200)
    parser.add_argument(
        "--consumers", type=int, default=10, help="couriers to wait for"
    )
    parser.add_argument(
        "--hwm", type=int, default=1000, help="orders queued per courier"
    )
    parser.add_argument("--ledger", help="append each pushed order id here")
    parser.add_argument("--note-bytes", type=int, default=0, help="pad orders (bytes)")
    args = parser.parse_args(argv)
    rng = random.Random(args.name)
    ledger = (
        os.open(args.ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        if args.ledger
        else None
    )
    with Pusher(args.bind, bind=True, hwm=args.hwm) as desk:
        print(
            f"{args.name}: taking orders on {desk.endpoint}",
            file=sys.stderr,
            flush=True,
        )
        if args.consumers:
            desk.wait_for_peers(args.consumers, timeout=30)
        for number in range(1, args.orders + 1):
            order = {"order": f"{args.name}-{number}", "dish": rng.choice(DISHES)}
            if args.note_bytes:
                order["note"] = "x" * args.note_bytes
            desk.send_json(order)
            if ledger is not None:
                os.write(ledger, f"{order['order']}\n".encode())
        for _ in range(max(1, args.consumers)):
            desk.send_json({"closed": args.name})
        print(f"{args.name}: pushed {args.orders} orders", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
