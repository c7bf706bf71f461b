"""Shared credit: a worker's capacity divided among the webs that use it.

Unit tests drive `greenpipe.credit.Shares` as the worker does; the rest run
several real web processes against shared workers and read the workers' own
count of the most jobs they held at once.
"""

from __future__ import annotations

import random
import signal

import pytest

from greenpipe.credit import Shares, water_fill
from tests.support import Load, handled_ids, poll_until

# -- unit -------------------------------------------------------------------------


def test_water_fill_is_max_min_fair():
    assert water_fill(100, {b"a": 100, b"b": 100}) == {b"a": 50, b"b": 50}
    assert water_fill(100, {b"a": 10, b"b": 100}) == {b"a": 10, b"b": 90}
    assert water_fill(100, {b"a": 10, b"b": 20}) == {b"a": 10, b"b": 90}
    assert sum(water_fill(100, {b"a": 100, b"b": 100, b"c": 100}).values()) == 100


def _apply(shares: Shares, actions) -> dict[bytes, list[int]]:
    sent: dict[bytes, list[int]] = {}
    for account, change in actions:
        sent.setdefault(account.key, []).append(change)
    return sent


def test_one_web_gets_everything_at_once_and_keeps_it():
    shares = Shares(100)
    a = shares.join(b"a")
    assert _apply(shares, shares.rebalance()) == {b"a": [0]}  # READY
    assert a.credit == 100
    for _ in range(5):
        assert shares.rebalance(tick=True) == [], "nothing moves with one web"


def test_a_second_web_waits_for_its_share_until_the_cut_is_confirmed():
    shares = Shares(100)
    a = shares.join(b"a")
    shares.rebalance()
    b = shares.join(b"b")
    sent = _apply(shares, shares.rebalance())
    assert sent[b"a"] == [-75], sent  # A is idle: down to the floor, 25
    assert b.waiting and b.credit == 0, "not before A applied the cut"
    assert shares.free() == 0
    assert shares.applied(a, a.seq)
    sent = _apply(shares, shares.rebalance())
    assert sent == {b"b": [0]} and b.credit == 75 and not b.waiting, sent


def test_credit_moves_to_the_web_that_uses_it():
    shares = Shares(100)
    a, b = shares.join(b"a"), shares.join(b"b")
    shares.rebalance()
    shares.applied(a, a.seq)
    shares.rebalance()
    for _ in range(b.credit):  # B uses all it has: hungry
        shares.started(b)
    for _ in range(3):
        actions = shares.rebalance(tick=True)
        for account, change in actions:
            if change < 0:
                shares.applied(account, account.seq)
    assert b.credit > a.credit and a.credit >= 25, (a.credit, b.credit)


def test_promises_never_exceed_capacity_whatever_happens():
    rng = random.Random(7)
    shares = Shares(50)
    web_held: dict[bytes, int] = {}  # what each web believes it has out
    for step in range(5000):
        keys = list(shares.accounts)
        event = rng.random()
        if event < 0.05 and len(keys) < 5:
            shares.join(bytes([65 + step % 26, step % 251]))
        elif event < 0.08 and keys:
            shares.leave(rng.choice(keys))
        elif event < 0.5 and keys:
            account = shares.accounts[rng.choice(keys)]
            # a web sends only within the credit it knows of
            if not account.waiting and web_held.get(account.key, 0) < account.credit:
                shares.started(account)
                web_held[account.key] = web_held.get(account.key, 0) + 1
        elif event < 0.8:
            for account in list(shares.accounts.values()) + shares._departed:
                if account.held and rng.random() < 0.5:
                    shares.finished(account)
                    web_held[account.key] = web_held.get(account.key, 1) - 1
        else:
            for account, _ in shares.rebalance(tick=rng.random() < 0.5):
                if rng.random() < 0.7:
                    shares.applied(account, account.seq)
        assert shares.free() >= 0, step
        assert shares.held <= 50, (step, shares.held)


# -- real processes -----------------------------------------------------------------


def _most_held(worker) -> int:
    worker.proc.signal(signal.SIGTERM)
    line = worker.proc.expect(r"held at most (\d+) jobs at once \(CONCURRENCY (\d+)")
    return int(line[1])


@pytest.mark.parametrize("k", [2, 3])
def test_k_webs_share_a_slow_workers_capacity(start_worker, start_web, record_dir, k):
    slow = start_worker(concurrency=5, env={"GREENPIPE_SLEEP": "0.2"})
    fast = [start_worker(), start_worker()]
    webs = [start_web([slow, *fast], heartbeat=0.2, heartbeat_timeout=1)
            for _ in range(k)]  # fmt: skip
    loads = [Load(web.port, total=400, concurrency=12, payload={}) for web in webs]
    for load in loads:
        load.join(120)
        assert load.statuses() == {202: 400}, (load.statuses(), load.errors[:3])
    for web in webs:
        web.wait_settled(60)
    accepted = set().union(*(load.accepted_ids() for load in loads))
    assert handled_ids(record_dir).keys() == accepted, "nothing lost"
    split = [sum(web.worker_stats()[i]["acked"] for web in webs) for i in range(3)]
    assert split[0] * 4 < min(split[1:]), f"the fast ones take the rest: {split}"
    most = _most_held(slow)
    assert most <= 5, f"{k} webs, CONCURRENCY 5: the slow worker held {most} at once"


def test_kill_9_with_two_webs_each_resends_its_own(start_worker, start_web, record_dir):
    workers = [start_worker() for _ in range(3)]
    webs = [start_web(workers, heartbeat=0.2, heartbeat_timeout=1) for _ in range(2)]
    loads = [Load(web.port, total=800, concurrency=10, payload={"sleep": 0.02})
             for web in webs]  # fmt: skip
    poll_until(lambda: min(w.stats()["acked"] for w in webs), lambda n: n >= 100, 30,
               "100 acknowledged by each web")  # fmt: skip
    workers[1].proc.signal(signal.SIGKILL)
    for load in loads:
        load.join(120)
        assert load.statuses() == {202: 800}, load.statuses()
    for web in webs:
        stats = web.wait_settled(60)
        assert stats["resent"] == stats["workers"][1]["resent"] >= 1, stats
    accepted = set().union(*(load.accepted_ids() for load in loads))
    missing = accepted - handled_ids(record_dir).keys()
    assert not missing, f"{len(missing)} lost"
