"""The examples' pieces run in families of their own, as real processes.

Each example's documented command (`python -m examples.sum`, `.mapreduce`,
`.food_delivery`, `.cluster`) is run by tests/test_readme.py from its README,
which also checks the figures it prints (WHAT_IT_PRINTS there)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.support import PYTHON, Proc, free_port, poll_until

pytestmark = pytest.mark.timeout(120)


def test_food_delivery_many_producers_many_consumers(tmp_path: Path, procs):
    desks = [f"tcp://127.0.0.1:{free_port()}" for _ in range(2)]
    ledger = tmp_path / "delivered"
    producers = [
        Proc(f"desk{i}", [PYTHON, "-m", "examples.food_delivery.producer", "--bind", desk,
             "--name", f"desk{i}", "--orders", "90", "--consumers", "3"])
        for i, desk in enumerate(desks)
    ]  # fmt: skip
    couriers = [
        Proc(f"courier{i}", [PYTHON, "-m", "examples.food_delivery.consumer", "--name",
             f"courier{i}", "--connect", ",".join(desks), "--ledger", str(ledger)])
        for i in range(3)
    ]  # fmt: skip
    procs.extend(producers + couriers)
    for courier in couriers:
        assert courier.wait_exit(60) == 0, courier.tail()
    delivered = ledger.read_text().split()
    assert sorted(delivered) == sorted(
        f"desk{d}-{n}" for d in range(2) for n in range(1, 91)
    )
    counts = [int(c.expect(r"delivered (\d+) orders")[1]) for c in couriers]
    assert counts == [60, 60, 60], counts


def test_food_delivery_orders_are_transient_a_dead_desk_loses_them(
    tmp_path: Path, procs
):
    """Plain PUSH/PULL is at most once: kill the producer and what it queued is gone.

    Orders are padded (100 KB) and the couriers paused, so that the kernel's
    socket buffers fill up and orders wait in the producer's ZeroMQ queue,
    which dies with it. Loopback's buffers take tens of MB here (tcp_rmem's
    max is 32 MiB): at 20 KB an order all 3000 fit in them, and a kill with
    the couriers still reading once lost nothing (what the kernel holds, a
    dead process's sockets still deliver).
    """
    desk = f"tcp://127.0.0.1:{free_port()}"
    pushed, delivered = tmp_path / "pushed", tmp_path / "delivered"
    producer = Proc("desk", [PYTHON, "-m", "examples.food_delivery.producer", "--bind", desk,
                    "--orders", "3000", "--consumers", "2", "--hwm", "20",
                    "--note-bytes", "100000",
                    "--ledger", str(pushed)])  # fmt: skip
    couriers = [
        Proc(f"courier{i}", [PYTHON, "-m", "examples.food_delivery.consumer", "--name",
             f"courier{i}", "--connect", desk, "--hwm", "20", "--ledger", str(delivered)])
        for i in range(2)
    ]  # fmt: skip
    procs.extend([producer, *couriers])
    poll_until(
        lambda: len(delivered.read_text().split()) if delivered.exists() else 0,
        lambda n: n >= 50,
        30,
        "50 orders delivered",
    )
    # The couriers stopped, the desk fills the socket buffers, then its own
    # ZeroMQ queues (HWM 20 a courier), and blocks: only then does a kill
    # lose orders for certain (what the kernel holds still arrives).
    for courier in couriers:
        courier.signal(signal.SIGSTOP)
    poll_until(lambda: len(pushed.read_text().split()), _unchanged_for(1.5), 60,
               "the desk blocked, its queues full (its ledger still)")  # fmt: skip
    producer.signal(signal.SIGKILL)
    producer.wait_exit(10)
    for courier in couriers:
        courier.signal(signal.SIGCONT)
    in_ledger = len(pushed.read_text().split())
    # The couriers finish what reached them, then wait for more that never comes.
    settled = poll_until(
        lambda: len(delivered.read_text().split()),
        _unchanged_for(1.0),
        30,
        "the couriers to go quiet",
    )
    assert in_ledger > settled, (
        f"pushed {in_ledger}, delivered {settled}: nothing lost?"
    )
    assert in_ledger < 3000


def _unchanged_for(seconds: float):
    import time

    state = {"value": None, "since": 0.0}

    def check(value: int) -> bool:
        now = time.monotonic()
        if value != state["value"]:
            state.update(value=value, since=now)
            return False
        return now - state["since"] >= seconds

    return check


def test_web_feeds_plain_pull_workers_at_most_once(start_worker, start_web, procs):
    pulls = []
    for index in range(2):
        proc = Proc(
            f"pull{index}", [PYTHON, "-m", "examples.pull_worker", "--port", "0"]
        )
        procs.append(proc)
        pulls.append(int(proc.expect(r"listening on tcp://[^:]+:(\d+)")[1]))
    worker = start_worker()
    endpoints = [f"push+tcp://127.0.0.1:{port}" for port in pulls] + [worker]
    web = start_web(endpoints)  # returns once the barrier is met: handshakes + READY
    ids = [web.post("/jobs", {"n": n})[2]["id"] for n in range(9)]
    for index in range(2):
        for job_id in ids[index::3]:
            procs[index].expect(rf"job {job_id} \(8 bytes\) \{{\"n\": \d\}}")
    stats = web.wait_settled()
    rows = stats["workers"]
    assert [r["delivery"] for r in rows] == [
        "at-most-once",
        "at-most-once",
        "at-least-once",
    ]
    assert [r["sent"] for r in rows] == [3, 3, 3] and rows[2]["acked"] == 3
    assert [r["acked"] for r in rows[:2]] == [0, 0]
    status, _, body = web.post("/jobs", {}, headers={"Prefer": "wait=2"})
    assert status == 202 and "sent at most once" in body["detail"]
