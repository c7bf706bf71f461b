"""Ventilator -> worker, paced: the sum of 1..100, one number every 20 ms.

    python -m examples.sum

A ventilator PUSHes the numbers 1..100 as soon as the worker is connected
(the barrier, not a sleep); the worker PULLs them one at a time, pacing itself
with pause()/resume() rather than sleeping in its receive loop, adds each to a
running sum and logs it. On 100 it closes both sockets and logs "done!".
"""

from gevent import monkey

monkey.patch_all()

import logging  # noqa: E402

import gevent  # noqa: E402

from greenpipe.pushpull import Puller, Pusher  # noqa: E402

log = logging.getLogger("examples.sum")
PACE_S = 0.02  # one number every 20 ms


def ventilate(pusher: Pusher) -> None:
    pusher.wait_for_peers(1, timeout=10)
    for number in range(1, 101):
        pusher.send_json(number)
    log.info("ventilator: pushed 1..100")


def work(puller: Puller, pusher: Pusher) -> int:
    total = 0
    for message in puller:
        number = puller.json(message)
        total += number
        log.info("sum %d (+%d)", total, number)
        if number == 100:
            puller.close()
            pusher.close()
            log.info("done!")
            break
        puller.pause()
        gevent.spawn_later(PACE_S, puller.resume)
    return total


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    pusher = Pusher("tcp://127.0.0.1:*", bind=True)
    puller = Puller(pusher.endpoint)
    ventilator = gevent.spawn(ventilate, pusher)
    total = work(puller, pusher)
    ventilator.get(timeout=5)
    return 0 if total == 5050 else 1


if __name__ == "__main__":
    raise SystemExit(main())
