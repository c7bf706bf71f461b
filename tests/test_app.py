"""The Flask app with a fake dispatcher: routes, Prefer: wait, and JSON errors."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import pytest

from greenpipe.config import WebSettings
from greenpipe.errors import Unavailable
from greenpipe.jobs import Outcome, Status
from greenpipe.routes import create_app, parse_wait

pytestmark = pytest.mark.inprocess  # make test-fast


@dataclass
class FakeJob:
    id: str


@dataclass
class FakeDispatcher:
    jobs: list[dict[str, Any]] = field(default_factory=list)
    outcome_to_give: Outcome | None = None
    unavailable: Unavailable | None = None
    waited: list[float] = field(default_factory=list)

    def submit(self, job, key=""):
        if self.unavailable:
            raise self.unavailable
        self.jobs.append(
            dict(method=job.method, path=job.path, query=job.query,
                 content_type=job.content_type, body=job.body,
                 reply=job.reply is not None)
        )  # fmt: skip
        return FakeJob(f"job-{len(self.jobs)}")

    def outcome(self, job, timeout):
        self.waited.append(timeout)
        return self.outcome_to_give

    def health(self):
        return True, {"status": "ok"}

    def stats(self):
        return {"accepted": len(self.jobs)}


@pytest.fixture
def dispatcher():
    return FakeDispatcher()


@pytest.fixture
def client(dispatcher):
    app = create_app(dispatcher, WebSettings(max_body=1000, max_wait=10))
    return app.test_client()


def test_get_root_makes_one_job_and_answers_202_with_its_id(client, dispatcher):
    resp = client.get("/?n=1")
    assert resp.status_code == 202
    assert resp.get_json() == {"id": "job-1"}
    assert resp.content_type == "application/json"
    assert dispatcher.jobs == [
        dict(
            method=b"GET",
            path=b"/",
            query=b"n=1",
            content_type=b"",
            body=b"",
            reply=False,
        )
    ]


def test_post_jobs_passes_the_body_through_as_is(client, dispatcher):
    resp = client.post("/jobs", data=b'{"a": [1, 2]}', content_type="application/json")
    assert resp.status_code == 202
    assert dispatcher.jobs[0]["body"] == b'{"a": [1, 2]}'
    assert dispatcher.jobs[0]["content_type"] == b"application/json"
    resp = client.post(
        "/jobs", data=b"\x00\xffbinary", content_type="application/octet-stream"
    )
    assert resp.status_code == 202 and dispatcher.jobs[1]["body"] == b"\x00\xffbinary"


def test_prefer_wait_returns_the_result(client, dispatcher):
    dispatcher.outcome_to_give = Outcome("tcp://w:1", Status.OK, b'{"sum": 3}')
    resp = client.post("/jobs", data=b"x", headers={"Prefer": "respond-async, wait=5"})
    assert resp.status_code == 200
    assert resp.get_json() == {
        "id": "job-1",
        "worker": "tcp://w:1",
        "result": {"sum": 3},
    }
    assert resp.headers["Preference-Applied"] == "wait=5"
    assert dispatcher.jobs[0]["reply"] is True and dispatcher.waited == [5.0]


def test_prefer_wait_is_capped(client, dispatcher):
    dispatcher.outcome_to_give = Outcome("w", Status.OK, b"")
    resp = client.post("/jobs", headers={"Prefer": "wait=3600"})
    assert resp.status_code == 200 and resp.get_json()["result"] is None
    assert (
        dispatcher.waited == [10.0] and resp.headers["Preference-Applied"] == "wait=10"
    )


def test_prefer_wait_handler_failure_is_502_and_timeout_504(client, dispatcher):
    dispatcher.outcome_to_give = Outcome("w", Status.FAILED, b"RuntimeError: boom")
    resp = client.post("/jobs", headers={"Prefer": "wait=1"})
    assert resp.status_code == 502
    assert resp.get_json()["detail"] == "RuntimeError: boom"
    dispatcher.outcome_to_give = None
    resp = client.post("/jobs", headers={"Prefer": "wait=1"})
    assert resp.status_code == 504
    assert "still delivered at least once" in resp.get_json()["detail"]


@pytest.mark.parametrize(
    "header", ["wait=abc", "wait=-1", "wait=", "wait=inf", "wait=nan"]
)
def test_bad_prefer_is_400_naming_the_value(client, header):
    resp = client.post("/jobs", headers={"Prefer": header})
    assert resp.status_code == 400
    body = resp.get_json()
    assert body["error"] == "Bad Request"
    assert (
        "Prefer: wait=" in body["detail"] and "e.g. 'Prefer: wait=5'" in body["detail"]
    )


def test_parse_wait_ignores_other_preferences_and_uses_the_first_wait():
    assert parse_wait(None, 30) == 0
    assert parse_wait("return=minimal", 30) == 0
    assert parse_wait('wait="2", wait=9', 30) == 2
    assert parse_wait("handling=lenient; x=y, WAIT=1.5", 30) == 1.5


def test_invalid_json_with_json_content_type_is_400(client, dispatcher):
    resp = client.post("/jobs", data=b"{not json", content_type="application/json")
    assert resp.status_code == 400
    detail = resp.get_json()["detail"]
    assert "not valid JSON" in detail and "'application/json'" in detail
    assert dispatcher.jobs == []


def test_unknown_route_404_and_wrong_method_405(client):
    resp = client.get("/nope")
    assert resp.status_code == 404
    assert resp.get_json()["detail"].startswith(
        "no route for GET /nope; the routes are"
    )
    resp = client.delete("/jobs")
    assert resp.status_code == 405
    assert "DELETE is not allowed on /jobs; use" in resp.get_json()["detail"]
    assert "POST" in resp.headers["Allow"]


def test_body_over_max_body_is_413_with_and_without_content_length(client, dispatcher):
    resp = client.post("/jobs", data=b"x" * 1001)
    assert resp.status_code == 413
    assert "Content-Length 1001" in resp.get_json()["detail"]
    assert "MAX_BODY (1000 bytes)" in resp.get_json()["detail"]
    chunked = client.post(
        "/jobs",
        input_stream=io.BytesIO(b"x" * 5000),
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert chunked.status_code == 413
    assert "a chunked body" in chunked.get_json()["detail"]
    assert dispatcher.jobs == []


def test_compressed_body_is_415(client):
    resp = client.post("/jobs", data=b"x", headers={"Content-Encoding": "gzip"})
    assert resp.status_code == 415
    assert "Content-Encoding 'gzip' is not supported" in resp.get_json()["detail"]


def test_unavailable_is_503_with_retry_after(client, dispatcher):
    dispatcher.unavailable = Unavailable("0 of 3 workers READY", retry_after=2)
    resp = client.get("/")
    assert resp.status_code == 503
    assert resp.headers["Retry-After"] == "2"
    assert resp.get_json() == {"error": "unavailable", "detail": "0 of 3 workers READY"}


def test_a_bug_is_a_json_500_without_traceback(client, dispatcher):
    dispatcher.submit = lambda *a, **k: 1 / 0
    resp = client.get("/")
    assert resp.status_code == 500
    assert resp.get_json()["error"] == "internal error"
    assert "Traceback" not in resp.get_data(as_text=True)


def test_healthz_and_stats(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert client.get("/stats").get_json() == {"accepted": 0}
