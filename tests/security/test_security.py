"""Short versions of the security suite (the report: python -m tests.security).

Each attack runs against a real web.py and server.py while legitimate
requests keep coming; CURVE on and off, to show what the switch buys.
"""

from __future__ import annotations

import pytest

from tests.security.cases import HTTP_CASES, ZMQ_CASES, System, measure

pytestmark = pytest.mark.timeout(120)

ATTEMPTS = 4


@pytest.fixture(scope="module", params=[True, False], ids=["curve", "plain"])
def system(request, tmp_path_factory):
    running = System(tmp_path_factory.mktemp("security"), curve=request.param)
    running.start()
    yield running
    running.stop()


@pytest.mark.parametrize("case", list(ZMQ_CASES))
def test_worker_port_attacks(system, case):
    result = measure(system, case, ZMQ_CASES[case], ATTEMPTS)
    assert result.http_failures == 0, result
    if system.curve or case != "NULL-mechanism peer speaking greenpipe":
        assert result.injected == 0, result
    else:  # without CURVE anyone who can reach the port feeds the worker
        assert result.injected > 0, result
    assert system.worker.running and system.web.proc.running


@pytest.fixture(scope="module")
def web_only(tmp_path_factory):
    running = System(tmp_path_factory.mktemp("front-door"), curve=False)
    running.start()
    yield running
    running.stop()


@pytest.mark.parametrize("case", list(HTTP_CASES))
def test_http_front_door(web_only, case):
    attempts = 2 * web_only.max_connections if "idle" in case else 30
    result = measure(web_only, case, HTTP_CASES[case], attempts)
    assert result.http_failures == 0, result
    # "A well-behaved client keeps getting answers within a second or two."
    assert result.max_ms < 2000, result
    assert result.injected == 0, result
