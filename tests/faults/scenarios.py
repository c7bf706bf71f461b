"""The fault scenarios: each runs load on web + 3 workers, injects one fault,
and returns an `Outcome` (the books, detection and recovery times).

`Scale.ci` keeps each under ~15 s for the test suite; `Scale.report` is what
``python -m tests.faults --report`` runs for docs/reliability.md.
"""

from __future__ import annotations

import json
import random
import signal
import time
from dataclasses import dataclass

from tests.faults.harness import (
    IN_ROTATION,
    OUT_OF_ROTATION,
    Cluster,
    Monitor,
    Netns,
    Outcome,
    warm_up,
)
from tests.support import Load, poll_until

JOB = {"sleep": 0.01}  # every job takes 10 ms: a killed worker always holds some


@dataclass(frozen=True)
class Scale:
    concurrency: int = 20
    warmup: int = 200  # jobs acknowledged before the fault
    after: int = 300  # jobs acknowledged after recovery, before the load stops
    freeze_s: float = 4.0
    cut_s: float = 4.0
    storm_s: float = 8.0
    storm_every_s: float = 2.0


CI = Scale()
REPORT = Scale(
    concurrency=40,
    warmup=2000,
    after=3000,
    freeze_s=10,
    cut_s=10,
    storm_s=30,
    storm_every_s=3,
)


def _progress(stats: dict) -> int:
    """Jobs done as the web knows it: acknowledged, or only sent for plain PULL."""
    return stats["acked"] + sum(
        w["sent"] for w in stats["workers"] if w["delivery"] == "at-most-once"
    )


def _after(cluster: Cluster, jobs: int) -> None:
    start = _progress(cluster.web.stats())
    poll_until(
        cluster.web.stats,
        lambda s: _progress(s) >= start + jobs,
        60,
        f"{jobs} more jobs done",
    )


def _finish(
    cluster: Cluster, load: Load, monitor: Monitor, outcome: Outcome
) -> Outcome:
    load.stop()
    load.join(60)
    monitor.stop()
    if cluster.plain:  # nothing acknowledges: wait until the PULL workers go quiet
        _wait_quiet(cluster)
        return cluster.books(outcome, load)
    return cluster.settle(outcome, load)


def crash(scale: Scale, plain: bool = False, curve: bool = False) -> Outcome:
    """kill -9 one worker mid-load, restart it once the web has noticed."""
    with Cluster(plain=plain, curve=curve) as cluster:
        load = Load(cluster.web.port, None, scale.concurrency, payload=JOB)
        monitor = Monitor(cluster.web)
        warm_up(cluster, load, scale.warmup)
        killed_at = time.monotonic()
        cluster.kill(1)
        lost_at = monitor.wait(
            1, OUT_OF_ROTATION, 15, "the killed worker out of rotation"
        )
        cluster.restart_worker(1)
        restarted_at = time.monotonic()
        back_at = monitor.wait(
            1, IN_ROTATION, 15, "the restarted worker back in rotation"
        )
        _after(cluster, scale.after)
        outcome = Outcome(
            "plain PUSH/PULL: crash"
            if plain
            else "crash (kill -9, restart)" + (", CURVE on" if curve else ""),
            detect_s=lost_at - killed_at,
            recover_s=back_at - restarted_at,
        )
        return _finish(cluster, load, monitor, outcome)


def restart_storm(scale: Scale) -> Outcome:
    """kill -9 a random worker every few seconds, restarting each; count fds and RSS."""
    rng = random.Random(7)
    with Cluster() as cluster:
        load = Load(cluster.web.port, None, scale.concurrency, payload=JOB)
        monitor = Monitor(cluster.web)
        warm_up(cluster, load, scale.warmup)
        fds_before, rss_before = cluster.web_proc.open_fds(), cluster.web_proc.rss_kib()
        detects, recovers, kills = [], [], 0
        end = time.monotonic() + scale.storm_s
        while time.monotonic() < end:
            victim = rng.randrange(3)
            killed_at = time.monotonic()
            cluster.kill(victim)
            detects.append(
                monitor.wait(victim, OUT_OF_ROTATION, 15, "victim out") - killed_at
            )
            cluster.restart_worker(victim)
            restarted_at = time.monotonic()
            recovers.append(
                monitor.wait(victim, IN_ROTATION, 15, "victim back") - restarted_at
            )
            kills += 1
            time.sleep(
                max(0.0, scale.storm_every_s - (time.monotonic() - killed_at))
            )  # sleep-ok: pacing the storm
        _after(cluster, scale.after)
        extra = {  # measured under the same load as before the storm
            "kills": kills,
            "web_fds": (fds_before, cluster.web_proc.open_fds()),
            "web_rss_kib": (rss_before, cluster.web_proc.rss_kib()),
        }
        outcome = Outcome(
            f"restart storm ({kills} kills in {scale.storm_s:g} s)",
            detect_s=max(detects),
            recover_s=max(recovers),
            extra=extra,
        )
        return _finish(cluster, load, monitor, outcome)


def freeze(scale: Scale, curve: bool = False) -> Outcome:
    """SIGSTOP a worker for a while, then SIGCONT: it rejoins (or exits cleanly)."""
    with Cluster(curve=curve) as cluster:
        load = Load(cluster.web.port, None, scale.concurrency, payload=JOB)
        monitor = Monitor(cluster.web)
        warm_up(cluster, load, scale.warmup)
        frozen = cluster.workers[2]
        stopped_at = time.monotonic()
        frozen.signal(signal.SIGSTOP)
        lost_at = monitor.wait(2, {"lost"}, 15, "the frozen worker lost")
        time.sleep(
            max(0.0, scale.freeze_s - (time.monotonic() - stopped_at))
        )  # sleep-ok: the freeze lasts freeze_s
        frozen.popen.send_signal(signal.SIGCONT)
        thawed_at = time.monotonic()
        back_at = monitor.wait(2, IN_ROTATION, 15, "the thawed worker back in rotation")
        frozen.expected_exit = 0  # survived: it must also stop cleanly
        _after(cluster, scale.after)
        outcome = Outcome(
            f"freeze (SIGSTOP {scale.freeze_s:g} s, SIGCONT)"
            + (", CURVE on" if curve else ""),
            detect_s=lost_at - stopped_at,
            recover_s=back_at - thawed_at,
        )
        return _finish(cluster, load, monitor, outcome)


def stuck_handler(scale: Scale) -> Outcome:
    """One job holds its worker's event loop each time it runs: dead-lettered."""
    with Cluster(web={"max_deliveries": 2}) as cluster:
        load = Load(cluster.web.port, None, scale.concurrency, payload=JOB)
        monitor = Monitor(cluster.web)
        warm_up(cluster, load, scale.warmup)
        sent_at = time.monotonic()
        status, _, body = cluster.web.post("/jobs", {"block": 4})
        assert status == 202, body
        poison = body["id"]
        detected = poll_until(
            lambda: [
                i for i in range(3) if monitor.first(sent_at, i, {"lost"}) is not None
            ],
            bool,
            15,
            "a worker lost to the poison job",
        )
        detect_s = monitor.first(sent_at, detected[0], {"lost"})
        letters = poll_until(
            lambda: _dead_letters(cluster),
            lambda found: poison in found,
            30,
            f"poison job {poison} in the dead-letter file",
        )
        dead_at = time.monotonic()
        for index in range(3):  # every worker it blocked comes back
            monitor.wait(
                index, IN_ROTATION, 15, f"worker {index} back after the poison"
            )
        recover_s = time.monotonic() - dead_at
        _after(cluster, scale.after)
        outcome = Outcome(
            "stuck handler (blocks the loop)", detect_s=detect_s, recover_s=recover_s
        )
        outcome = _finish(cluster, load, monitor, outcome)
        outcome.extra = {"poison": poison, "dead_letters": letters}
        outcome.notes.append(
            f"poison job dead-lettered after {letters[poison]['attempts']} attempts: "
            f"{letters[poison]['reason']}"
        )
        return outcome


def _dead_letters(cluster: Cluster) -> dict[str, dict]:
    if not cluster.dead_letter.exists():
        return {}
    records = [
        json.loads(line) for line in cluster.dead_letter.read_text().splitlines()
    ]
    return {record["id"]: record for record in records}


def network_cut(
    scale: Scale, mode: str, plain: bool = False, curve: bool = False
) -> Outcome:
    """Worker 2 in its own network namespace; drop (or reset) its traffic, then heal."""
    what = "drop" if mode == "drop" else "TCP reset"
    name = f"network cut ({what} {scale.cut_s:g} s)"
    if plain:
        name = f"plain PUSH/PULL: {what} {scale.cut_s:g} s"
    if curve:
        name += ", CURVE on"
    with Netns() as netns, Cluster(netns=netns, plain=plain, curve=curve) as cluster:
        load = Load(cluster.web.port, None, scale.concurrency, payload=JOB)
        monitor = Monitor(cluster.web)
        warm_up(cluster, load, scale.warmup)
        cut_at = time.monotonic()
        netns.cut(mode, cluster.ports[2])
        lost_at = monitor.wait(2, OUT_OF_ROTATION, 15, "the cut worker out of rotation")
        time.sleep(
            max(0.0, scale.cut_s - (time.monotonic() - cut_at))
        )  # sleep-ok: the cut lasts cut_s
        netns.heal()
        healed_at = time.monotonic()
        back_at = monitor.wait(2, IN_ROTATION, 20, "the cut worker back after the heal")
        _after(cluster, scale.after)
        outcome = Outcome(
            name, detect_s=lost_at - cut_at, recover_s=back_at - healed_at
        )
        return _finish(cluster, load, monitor, outcome)


def _wait_quiet(cluster: Cluster, quiet_s: float = 1.0, timeout: float = 20.0) -> None:
    """Poll the records until their count stops changing for `quiet_s`."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        count = sum(cluster.handled().values())
        if count != last:
            last, since = count, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.1)  # sleep-ok: polling files that have no event to wait on
    raise AssertionError(f"the workers' records still changed after {timeout} s")


def slow_worker(scale: Scale) -> Outcome:
    """One worker's handler takes 200 ms a job: the web routes around it by credit."""
    slow = {"GREENPIPE_SLEEP": "0.2", "CONCURRENCY": "5"}
    with Cluster(worker_env={0: slow}) as cluster:
        load = Load(cluster.web.port, None, scale.concurrency, payload=JOB)
        monitor = Monitor(cluster.web)
        warm_up(cluster, load, scale.warmup + scale.after)
        outcome = _finish(cluster, load, monitor, Outcome("slow worker (200 ms a job)"))
        split = [w["acked"] for w in cluster.web.worker_stats()]
        outcome.extra = {"split": split}
        outcome.notes.append(f"jobs per worker {split}: the slow one took {split[0]}")
        return outcome


def all_slow(scale: Scale) -> Outcome:
    """Every worker slow and full: the rest get 503 at once, never hang."""
    slow = {"GREENPIPE_SLEEP": "0.2", "CONCURRENCY": "5"}
    with Cluster(
        web={"max_pending": 20}, worker_env={i: slow for i in range(3)}
    ) as cluster:
        load = Load(cluster.web.port, None, max(scale.concurrency, 40), payload=JOB)
        monitor = Monitor(cluster.web)
        poll_until(
            lambda: load.statuses().get(503, 0),
            lambda n: n >= 500,
            60,
            "500 answers 503",
        )
        outcome = _finish(cluster, load, monitor, Outcome("all workers slow and full"))
        rejected = sorted(
            seconds for status, _, seconds in load.results if status == 503
        )
        p99 = rejected[int(len(rejected) * 0.99) - 1]
        outcome.extra = {
            "503s": len(rejected),
            "p50_503_s": rejected[len(rejected) // 2],
            "p99_503_s": p99,
            "max_503_s": rejected[-1],
        }
        outcome.notes.append(
            f"{len(rejected)} requests got 503 (expected: no capacity); time to answer a 503: "
            f"p50 {rejected[len(rejected) // 2] * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
            f"max {rejected[-1] * 1000:.1f} ms"
        )
        return outcome


def rolling_restart(scale: Scale) -> Outcome:
    """SIGTERM each worker in turn under load and start it again (a deploy)."""
    with Cluster() as cluster:
        load = Load(cluster.web.port, None, scale.concurrency, payload=JOB)
        monitor = Monitor(cluster.web)
        warm_up(cluster, load, scale.warmup)
        longest_out = 0.0
        for index in range(3):
            stopped_at = time.monotonic()
            cluster.kill(index, signal.SIGTERM)
            assert cluster.workers[index].popen.returncode == 0, cluster.workers[
                index
            ].tail()
            cluster.restart_worker(index)
            back_at = monitor.wait(index, IN_ROTATION, 15, f"worker {index} back")
            longest_out = max(longest_out, back_at - stopped_at)
            _after(cluster, scale.after // 3)
        outcome = Outcome("rolling restart (SIGTERM each)", recover_s=longest_out)
        outcome.notes.append("recovery: longest time a worker was out, stop to back")
        return _finish(cluster, load, monitor, outcome)


def web_stop(scale: Scale) -> Outcome:
    """SIGTERM the web under load: it finishes and waits for acks, then exits 0."""
    with Cluster() as cluster:
        load = Load(cluster.web.port, None, scale.concurrency, payload={"sleep": 0.2})
        warm_up(cluster, load, scale.warmup // 4)
        in_flight = cluster.web.stats()["in_flight"]
        stopped_at = time.monotonic()
        cluster.web_proc.popen.send_signal(signal.SIGTERM)
        load.stop()  # the clients finish the request they are in, then stop
        code = cluster.web_proc.wait_exit(8)
        exit_s = time.monotonic() - stopped_at
        load.join(60)
        outcome = cluster.books(Outcome("web SIGTERM under load"), load)
        outcome.extra = {"exit_code": code, "exit_s": exit_s}
        outcome.notes.append(
            f"web exited {code} after {exit_s:.2f} s, having waited for the "
            f"acknowledgements of about {in_flight} jobs in flight; HTTP failures are "
            "requests caught by the stop"
        )
        return outcome


def web_kill(scale: Scale, journal: bool = True, kills: int = 3) -> Outcome:
    """kill -9 the web under load, `kills` times at random moments, restart it.

    The workers are slower than the load (20 ms a job, 5 at once each), so a
    backlog exists when the web dies. With the journal, the restarted web
    replays what was owed; without it, what it held is lost.
    """
    web = {} if journal else {"journal_dir": "off"}
    env = {index: {"GREENPIPE_SLEEP": "0.02"} for index in range(3)}
    name = "web kill -9 under a backlog, " + (
        "journal on" if journal else "journal off"
    )
    with Cluster(web=web, worker={"concurrency": 5}, worker_env=env) as cluster:
        loads, owed, replayed = [], [], 0
        for _ in range(kills):
            load = Load(cluster.web.port, None, scale.concurrency, payload=JOB)
            loads.append(load)
            wanted = random.randint(50, min(900, 50 + scale.warmup))  # < MAX_PENDING
            stats = poll_until(cluster.web.stats, lambda s, w=wanted: s["pending"] >= w,
                               30, f"a backlog of {wanted} jobs")  # fmt: skip
            owed.append(stats["pending"] + stats["in_flight"])
            cluster.web_proc.signal(signal.SIGKILL)
            cluster.web_proc.wait_exit(10)
            load.stop()
            load.join(60)
            cluster.start_web()
            if journal:
                replayed += int(cluster.web_proc.expect(r"replaying (\d+) jobs")[1])
        cluster.web.wait_settled(60)
        _wait_quiet(cluster)
        outcome = Outcome(name)
        for load in loads:
            part = cluster.books(Outcome(name), load)
            outcome.requests += part.requests
            outcome.accepted += part.accepted
            outcome.handled += part.handled
            outcome.lost += part.lost
            outcome.duplicated += part.duplicated
            outcome.http_failures += part.http_failures
        outcome.extra = {"owed": owed, "replayed": replayed}
        outcome.notes.append(
            f"{kills} kills with about {', '.join(map(str, owed))} jobs owed each time; "
            f"replayed {replayed}; accepted but never handled: {outcome.lost}"
        )
        return outcome


ALL = {
    "crash": crash,
    "restart_storm": restart_storm,
    "freeze": freeze,
    "stuck_handler": stuck_handler,
    "cut_drop": lambda scale: network_cut(scale, "drop"),
    "cut_reset": lambda scale: network_cut(scale, "reset"),
    "slow_worker": slow_worker,
    "all_slow": all_slow,
    "rolling_restart": rolling_restart,
    "web_stop": web_stop,
    "web_kill": web_kill,
    "web_kill_off": lambda scale: web_kill(scale, journal=False),
    "plain_crash": lambda scale: crash(scale, plain=True),
    "curve_crash": lambda scale: crash(scale, curve=True),
    "curve_freeze": lambda scale: freeze(scale, curve=True),
    "curve_cut_drop": lambda scale: network_cut(scale, "drop", curve=True),
    "plain_reset": lambda scale: network_cut(scale, "reset", plain=True),
}
