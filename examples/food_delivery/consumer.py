"""A courier: PULLs orders from one or more order desks and delivers them.

    python -m examples.food_delivery.consumer --name courier1 --connect tcp://127.0.0.1:5600

Each delivery takes a random 5-30 ms. The courier stops after one "closed"
message from every desk it is connected to, and prints how many it delivered.
With --ledger FILE it appends each delivered order id.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402

from greenpipe.pushpull import Puller  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="consumer", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--name", default="courier")
    parser.add_argument(
        "--connect", default="tcp://127.0.0.1:5600", help="comma-separated order desks"
    )
    parser.add_argument("--hwm", type=int, default=1000)
    parser.add_argument("--ledger", help="append each delivered order id here")
    args = parser.parse_args(argv)
    desks = [d for d in args.connect.split(",") if d]
    rng = random.Random(args.name)
    ledger = (
        os.open(args.ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        if args.ledger
        else None
    )
    delivered, closed = 0, set()
    with Puller(desks, hwm=args.hwm) as orders:
        gevent.signal_handler(signal.SIGTERM, orders.close)  # ends the loop below
        print(
            f"{args.name}: ready for orders from {len(desks)} desk(s)",
            file=sys.stderr,
            flush=True,
        )
        for message in orders:
            order = orders.json(message)
            if "closed" in order:
                closed.add(order["closed"])
                if len(closed) == len(desks):
                    break
                continue
            gevent.sleep(rng.uniform(0.005, 0.03))  # riding there
            delivered += 1
            if ledger is not None:
                os.write(ledger, f"{order['order']}\n".encode())
    print(f"{args.name}: delivered {delivered} orders", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
