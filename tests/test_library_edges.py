"""The library's rough edges (issue 25): errors that blame the right code,
settings changed after they were read, tests that forget TESTING, and
status from any of the processes sharing a port.
"""

from __future__ import annotations

import logging

import pytest
from flask import Flask

from greenpipe import (
    BadJob,
    Greenpipe,
    Handlers,
    TooLarge,
    json_errors,
)


def _handlers() -> Handlers:
    handlers = Handlers()

    @handlers.job("echo")
    def echo(job):
        return job.json()

    return handlers


def _user_app(*, json: bool = True, **config) -> tuple[Flask, Greenpipe]:
    app = Flask("user_app")
    app.config.update(TESTING=True, GREENPIPE_MAX_BODY=1000, **config)
    pipe = Greenpipe(app, handlers=_handlers())

    @app.get("/orders/<key>")
    def lookup(key):
        return {"order": {}[key]}  # the user's own bug: a KeyError

    @app.post("/echo")
    def echo():
        from flask import request

        job = pipe.push(
            "echo",
            body=request.get_data(),
            idempotency_key=request.headers.get("Idempotency-Key", ""),
        )
        return {"id": job.id}, 202

    if json:
        json_errors(app)
    return app, pipe


# -- item 4: errors that blame the right code ---------------------------------------


def test_a_bug_in_the_users_view_is_not_called_greenpipes(caplog):
    app, _ = _user_app()
    with caplog.at_level(logging.ERROR, "greenpipe.routes"):
        resp = app.test_client().get("/orders/42")
    assert resp.status_code == 500
    body = resp.get_json()
    assert body["error"] == "internal error"
    assert "greenpipe" not in body["detail"], body
    assert "KeyError" in body["detail"] and "'lookup'" in body["detail"], body
    assert "Traceback" not in resp.get_data(as_text=True)
    assert "KeyError" in caplog.text, "the log has the traceback"


@pytest.mark.parametrize("json", [True, False], ids=["json_errors", "plain"])
def test_pushes_refused_for_their_input_answer_413_and_400(json):
    app, _ = _user_app(json=json)
    client = app.test_client()
    resp = client.post("/echo", data=b"x" * 2000)
    assert resp.status_code == 413, resp.get_data(as_text=True)
    assert "over MAX_BODY" in resp.get_json()["detail"]
    resp = client.post("/echo", data=b"{}", headers={"Idempotency-Key": "\t"})
    assert resp.status_code == 400, resp.get_data(as_text=True)
    assert "idempotency key" in resp.get_json()["detail"]
    assert client.post("/echo", data=b"{}").status_code == 202


def test_input_errors_are_still_value_errors_outside_a_request():
    app, pipe = _user_app()
    with app.app_context():
        with pytest.raises(ValueError, match="over MAX_BODY") as too_large:
            pipe.push("echo", body=b"x" * 2000)
        assert isinstance(too_large.value, TooLarge)
        with pytest.raises(ValueError, match="idempotency key") as bad:
            pipe.push("echo", json={}, idempotency_key="é")
        assert isinstance(bad.value, BadJob)
