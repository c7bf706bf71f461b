"""Workers on other hosts: each in its own network namespace (its own address on
a veth pair), the web in the root one, CURVE on: barrier, exact round-robin, a
freeze and a kill -9 under load. Skips without root/ip/iptables (the network
cut across namespaces is in tests/faults).

Also: a worker named by DNS name in WORKERS (resolved by libzmq at connect).
"""

from __future__ import annotations

import os
import signal

import pytest

from greenpipe.curve import write_keypair
from greenpipe.testing import start_worker as spawn_worker
from tests.faults.harness import Netns, NetnsUnavailable
from tests.support import (
    Load,
    assert_round_robin_order,
    handled_ids,
    poll_until,
    read_records,
)


@pytest.fixture
def hosts():
    made: list[Netns] = []
    try:
        for index in range(3):
            made.append(Netns(name=f"gph{os.getpid() % 10000}{index}",
                              subnet=150 + index))  # fmt: skip
    except NetnsUnavailable as exc:
        for netns in made:
            netns.close()
        pytest.skip(f"network namespaces unavailable: {exc}")
    yield made
    for netns in made:
        netns.close()


def test_workers_on_three_hosts_with_curve(hosts, procs, record_dir, start_web,
                                           tmp_path):  # fmt: skip
    keys, allow = tmp_path / "keys", tmp_path / "allow"
    for name in ("worker", "web"):
        write_keypair(str(keys), name)
    allow.mkdir()
    (allow / "web.key").write_bytes((keys / "web.key").read_bytes())
    workers = []
    for index, netns in enumerate(hosts):
        proc, port = spawn_worker(
            f"worker{index}", 0, {"GREENPIPE_RECORD_DIR": str(record_dir)},
            prefix=netns.exec_prefix(), handler="tests.handlers:record",
            host="0.0.0.0", curve_secret=keys / "worker.key_secret",
            curve_allow=allow,
        )  # fmt: skip
        procs.append(proc)
        assert not proc.matches("beyond loopback"), "CURVE is on: no warning"
        workers.append((proc, f"tcp://{netns.inner_ip}:{port}"))
    web = start_web([address for _, address in workers], heartbeat=0.2,
                    heartbeat_timeout=1, curve_secret=keys / "web.key_secret",
                    curve_server=keys / "worker.key")  # fmt: skip
    ids = [web.post("/jobs", {"n": i})[2]["id"] for i in range(30)]  # in order
    web.wait_settled()
    ports = [address.rsplit(":", 1)[1] for _, address in workers]
    records = read_records(record_dir)
    assert sum(len(v) for v in records.values()) == 30
    assert_round_robin_order(record_dir, ports, ids)  # exact round-robin

    load = Load(web.port, total=1500, concurrency=20, payload={"sleep": 0.01})
    poll_until(web.stats, lambda s: s["acked"] >= 200, 30, "200 acknowledged")
    frozen = workers[2][0]  # freeze: out of the rotation, then back on SIGCONT
    frozen.signal(signal.SIGSTOP)
    web.wait_state(2, {"lost"}, 10)
    frozen.popen.send_signal(signal.SIGCONT)
    web.wait_state(2, {"ready", "full"}, 10)
    frozen.expected_exit = 0
    workers[1][0].signal(signal.SIGKILL)
    load.join(120)
    assert load.statuses() == {202: 1500}, load.statuses()
    stats = web.wait_settled(60)
    assert stats["workers"][1]["state"] == "lost" and stats["resent"] >= 1, stats
    missing = load.accepted_ids() - handled_ids(record_dir).keys()
    assert not missing, f"{len(missing)} accepted jobs never handled across hosts"


def test_a_worker_named_by_dns_name(start_worker, start_web, record_dir):
    worker = start_worker()
    web = start_web([f"localhost:{worker.port}"])
    assert web.worker_stats()[0]["endpoint"] == f"tcp://localhost:{worker.port}"
    assert web.post("/jobs", {})[0] == 202
    web.wait_settled()
    assert sum(handled_ids(record_dir).values()) == 1
