"""Ambiguous HTTP framing is refused before any job is made (RFC 9112, RFC 9110).

Each case of tests/security/framing.py goes raw, on its own connection, to a
real web.py and to a user's app under ``serve(app)``, each in front of one
real server.py: the answer is the RFC's, a refusal is JSON naming what was
wrong and closes the connection, and /stats says no job was accepted for it.
"""

from __future__ import annotations

import json

import pytest

from tests.security.framing import CASES, Case, Target

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module", params=["web.py", "serve(app)"])
def target(request, tmp_path_factory):
    running = Target(request.param, tmp_path_factory.mktemp("framing")).start()
    yield running
    running.stop()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_framing(target: Target, case: Case):
    answer = target.send(case)
    seen = f"{target.kind} answered {answer.show()}: {answer.body[:300]!r}"
    assert answer.status == case.status, seen
    assert answer.second is None, f"a second request was read: {seen}"
    if not case.refused:
        assert answer.jobs == 1, seen
        return
    assert answer.jobs == 0, f"a job was made: {seen}"
    assert answer.closed, f"the connection was left open: {seen}"
    payload = json.loads(answer.body)
    assert set(payload) == {"error", "detail"} and "send" in payload["detail"], payload


def test_still_serving_after_the_table(target: Target):
    """Every refusal closed its own connection only: the server goes on."""
    status, _, body = target.web.get("/")
    assert status == 202 and "id" in body, body
    assert target.procs[-1].running and target.procs[0].running
