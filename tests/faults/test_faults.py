"""Short runs of every fault scenario, with what each must show.

The same scenarios run longer with ``python -m tests.faults --report``.
"""

from __future__ import annotations

import pytest

from tests.faults import scenarios
from tests.faults.harness import NetnsUnavailable, Outcome
from tests.faults.scenarios import CI

pytestmark = pytest.mark.timeout(120)
CREDIT = 100  # the default CONCURRENCY: the most one lost worker can duplicate


def assert_nothing_lost(outcome: Outcome, max_duplicated: int = CREDIT) -> None:
    assert outcome.accepted > 0, outcome
    assert outcome.lost == 0, outcome
    assert outcome.handled == outcome.accepted, outcome
    assert outcome.duplicated <= max_duplicated, outcome


def test_crash_and_restart():
    outcome = scenarios.crash(CI)
    assert_nothing_lost(outcome)
    assert outcome.http_failures == 0, outcome
    assert outcome.detect_s < 1.0, (
        f"a crash is a closed connection: seen at once {outcome}"
    )
    assert outcome.recover_s < 1.0, outcome


def test_restart_storm_keeps_fds_and_memory_flat():
    outcome = scenarios.restart_storm(CI)
    kills = outcome.extra["kills"]
    assert_nothing_lost(outcome, max_duplicated=CREDIT * kills)
    assert outcome.http_failures == 0, outcome
    fds_before, fds_after = outcome.extra["web_fds"]
    assert fds_after <= fds_before + 2, f"web fds {fds_before} -> {fds_after}"
    rss_before, rss_after = outcome.extra["web_rss_kib"]
    assert rss_after - rss_before < 20_000, f"web RSS {rss_before} -> {rss_after} KiB"


def test_freeze_then_thaw():
    outcome = scenarios.freeze(CI)
    assert_nothing_lost(outcome)
    assert outcome.http_failures == 0, outcome
    assert outcome.detect_s < 3.0 + 1.5, outcome  # HEARTBEAT_TIMEOUT 3 s + a tick
    assert outcome.recover_s < 2.0, outcome


def test_stuck_handler_is_dead_lettered_not_looped():
    outcome = scenarios.stuck_handler(CI)
    poison = outcome.extra["poison"]
    letters = outcome.extra["dead_letters"]
    assert list(letters) == [poison], f"only the poison job is given up on: {letters}"
    record = letters[poison]
    assert record["attempts"] == 2 and record["last_worker"].startswith("tcp://")
    assert "no heartbeat" in record["reason"] and record["body"] == '{"block": 4}'
    assert_nothing_lost(outcome)  # the poison job ran too (and held its worker)
    assert outcome.http_failures == 0, outcome


@pytest.mark.parametrize("mode", ["drop", "reset"])
def test_network_cut_and_heal(mode):
    try:
        outcome = scenarios.network_cut(CI, mode)
    except NetnsUnavailable as exc:
        pytest.skip(f"network namespaces unavailable: {exc}")
    assert_nothing_lost(outcome)
    assert outcome.http_failures == 0, outcome
    assert outcome.detect_s < 3.0 + 1.5, outcome
    assert outcome.recover_s < 3.0, outcome


def test_slow_worker_is_routed_around():
    outcome = scenarios.slow_worker(CI)
    assert_nothing_lost(outcome, max_duplicated=0)
    assert outcome.http_failures == 0, outcome
    slow, *fast = outcome.extra["split"]
    assert slow * 5 < min(fast), outcome.extra


def test_all_slow_answers_503_fast():
    outcome = scenarios.all_slow(CI)
    assert_nothing_lost(outcome, max_duplicated=0)
    # Answered, not held: a request held for a slot would wait for the load to
    # end (seconds). The median, as the tail on a shared 2-core machine is its
    # scheduler's (40 client threads in the test's process: a p50 of 118 ms
    # once); the p99 is in the notes (the fault report prints them).
    assert outcome.extra["p50_503_s"] < 0.5, outcome.notes


def test_rolling_restart_loses_and_repeats_nothing():
    outcome = scenarios.rolling_restart(CI)
    assert_nothing_lost(outcome, max_duplicated=0)
    assert outcome.http_failures == 0, outcome


def test_web_sigterm_waits_for_acknowledgements():
    outcome = scenarios.web_stop(CI)
    assert outcome.extra["exit_code"] == 0
    assert outcome.extra["exit_s"] < 5.0, "honcho kills 5 s after SIGTERM"
    assert_nothing_lost(outcome, max_duplicated=0)


def test_web_kill_9_under_a_backlog_loses_no_202_with_the_journal():
    outcome = scenarios.web_kill(CI)
    assert outcome.extra["replayed"] > 0, outcome.notes
    # Duplicates: jobs handled whose ack was not journaled before a kill.
    assert_nothing_lost(outcome, max_duplicated=sum(outcome.extra["owed"]))


def test_plain_push_pull_crash_runs_in_the_same_harness():
    outcome = scenarios.crash(CI, plain=True)
    assert outcome.accepted > 0 and outcome.http_failures == 0, outcome
    assert outcome.duplicated == 0, "at most once: never twice"


@pytest.mark.parametrize("fault", ["crash", "freeze", "cut_drop"])
def test_faults_with_curve_on(fault):
    """The same books with every link encrypted and authenticated (issue 13)."""
    try:
        outcome = scenarios.ALL[f"curve_{fault}"](CI)
    except NetnsUnavailable as exc:
        pytest.skip(f"network namespaces unavailable: {exc}")
    assert "CURVE on" in outcome.scenario
    assert_nothing_lost(outcome)
    assert outcome.http_failures == 0, outcome
    assert outcome.recover_s < 3.0, outcome
