"""The library's rough edges (issue 25): errors that blame the right code,
settings changed after they were read, tests that forget TESTING, and
status from any of the processes sharing a port.
"""

from __future__ import annotations

import logging
import signal
import tempfile
from pathlib import Path

import pytest
from flask import Flask

from greenpipe import (
    BadJob,
    ConfigError,
    Greenpipe,
    Handlers,
    Status,
    TooLarge,
    Unavailable,
    json_errors,
)
from tests.support import Web, poll_until


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
        for queue in ("", "re ports", "x" * 65, "é", None):
            with pytest.raises(BadJob, match=r"push: queue .* is not 1-64 characters"):
                pipe.push("echo", json={}, queue=queue)  # type: ignore[arg-type]
        assert pipe.push("echo", json={}, queue="reports").id, "inline: any queue"


# -- item 2: a test that forgets TESTING ---------------------------------------------


def _push_view(app: Flask, pipe: Greenpipe):
    with app.test_request_context("/"):
        return pipe.push("echo", json={"n": 1})


def test_a_setting_changed_after_it_was_read_raises_naming_it():
    app = Flask("user_app")
    app.config["GREENPIPE_MAX_PENDING"] = 10
    pipe = Greenpipe(app, handlers=_handlers())
    app.config["GREENPIPE_WORKERS"] = ["127.0.0.1:4999"]  # after: was ignored
    with pytest.raises(ConfigError, match=r"GREENPIPE_WORKERS: was set .* after "
                       r"greenpipe read it \(at Greenpipe\(app\) / init_app\)"):  # fmt: skip
        _push_view(app, pipe)
    del app.config["GREENPIPE_WORKERS"]
    app.config["GREENPIPE_MAX_PENDING"] = 20
    with pytest.raises(ConfigError, match=r"GREENPIPE_MAX_PENDING: changed"):
        _push_view(app, pipe)


def test_testing_may_be_set_up_to_the_first_push_not_after():
    app = Flask("user_app")
    pipe = Greenpipe(app, handlers=_handlers())
    app.config["TESTING"] = True  # the README's test does this: inline mode
    assert _push_view(app, pipe).id.startswith("inline")
    app.config["TESTING"] = False  # after the first push: would be ignored
    with pytest.raises(ConfigError, match=r"TESTING: changed .*\(at the first push"):
        _push_view(app, pipe)


def test_a_journal_under_pytest_stays_out_of_the_working_directory(
    tmp_path, monkeypatch, caplog
):
    monkeypatch.chdir(tmp_path)
    for name in ("JOURNAL_DIR", "DEAD_LETTER"):
        monkeypatch.delenv(name, raising=False)
    app = Flask("user_app")  # TESTING left off: real workers (none answer here)
    app.config.update(GREENPIPE_WORKERS=["127.0.0.1:1"], GREENPIPE_READY_TIMEOUT=0.1)
    ext = Greenpipe(app)
    with caplog.at_level(logging.WARNING, "greenpipe.ext"):
        pipe = ext.start(app)
    try:
        journal = Path(pipe.settings.journal_dir)
        assert journal.parent.parent == Path(tempfile.gettempdir()), journal
        assert journal.is_dir(), "the journal is kept, in a temporary directory"
        assert Path(pipe.settings.dead_letter).parent == journal.parent
        assert not list(tmp_path.iterdir()), "nothing in the working directory"
        assert str(journal.parent) in caplog.text, "the log says where it went"
    finally:
        ext.stop(app, timeout=0)

    explicit = Flask("user_app")
    explicit.config.update(GREENPIPE_WORKERS=["127.0.0.1:1"],
                           GREENPIPE_JOURNAL_DIR=str(tmp_path / "mine"))  # fmt: skip
    ext = Greenpipe(explicit)
    pipe = ext.start(explicit)
    try:
        assert pipe.settings.journal_dir == str(tmp_path / "mine"), "given: kept"
    finally:
        ext.stop(explicit, timeout=0)


def test_the_dashboard_in_inline_mode_says_why_there_is_none():
    app, _ = _user_app(json=False, GREENPIPE_OPS_ROUTES=True)
    resp = app.test_client().get("/dashboard")
    assert resp.status_code == 404
    body = resp.get_json()
    assert body["error"] == "no dashboard in inline mode", body
    assert "TESTING" in body["detail"] and "/jobs/<id>" in body["detail"]
    assert app.test_client().get("/dashboard/data").status_code == 404


# -- item 5: status from any process sharing the port --------------------------------


def _any_process_answers(web: Web) -> None:
    """Jobs accepted by both processes; every lookup, on a new connection each
    (so the kernel hands it to either process), answers 200 with the record."""
    ids = [web.post("/jobs", {"n": i})[2]["id"] for i in range(20)]
    prefixes = {job_id.rsplit("-", 1)[0] for job_id in ids}
    assert len(prefixes) == 2, f"both processes accepted jobs (p 2**-19): {ids}"
    for job_id in ids:
        poll_until(lambda job_id=job_id: web.get(f"/jobs/{job_id}"),
                   lambda r: r[0] != 200 or r[2]["status"] == "done", 10,
                   f"job {job_id} done, or a lookup not answered 200")  # fmt: skip
    for job_id in ids * 3:
        code, _, record = web.get(f"/jobs/{job_id}")
        assert code == 200, f"lookup of {job_id}: {code} {record}"
        assert (record["id"], record["status"]) == (job_id, "done"), record
    stranger = next(iter(prefixes))[:-1] + "z-0000000001"  # not a prefix: 404
    assert web.get(f"/jobs/{stranger}")[0] == 404
    gone = "0badf00d-0000000001"  # a prefix no process has
    assert web.get(f"/jobs/{gone}")[0] == 404


def test_status_with_web_processes_is_answered_by_either(start_worker, start_web):
    web = start_web([start_worker()], web_processes=2)
    _any_process_answers(web)
    assert web.get("/metrics")[0] == 421, "the shared port cannot speak for both"
    # A cancel too reaches the process that accepted the job (it has finished:
    # 409 with its record, from whichever process the connection lands on).
    ids = [web.post("/jobs", {"n": i})[2]["id"] for i in range(6)]
    for job_id in ids:
        poll_until(lambda job_id=job_id: web.get(f"/jobs/{job_id}")[2],
                   lambda r: r.get("status") == "done", 10, f"job {job_id} done")  # fmt: skip
    for job_id in ids * 2:
        code, _, found = web.request("DELETE", f"/jobs/{job_id}",
                                     headers={"X-Greenpipe-Action": "cancel"})  # fmt: skip
        assert code == 409 and found["job"]["id"] == job_id, (code, found)


def test_status_under_gunicorn_is_answered_by_either_worker(
    start_worker, start_gunicorn
):
    worker = start_worker()
    gunicorn, port = start_gunicorn([worker])
    gunicorn.expect("answers its siblings' lookups", 20, times=2)
    gunicorn.expect("barrier met", 20, times=2)
    web = Web(gunicorn, port)
    _any_process_answers(web)
    for _ in range(6):  # never one random worker's counters
        code, _, body = web.get("/metrics")
        assert code == 421 and "gunicorn" in body["detail"], (code, body)
    gunicorn.signal(signal.SIGTERM)
    assert gunicorn.wait_exit(30) == 0


# -- issue 31: inline mode as the README says it, and as a worker runs handlers ------


@pytest.mark.parametrize("value", ["1", "true"])
def test_greenpipe_inline_in_the_environment_turns_inline_mode_on(monkeypatch, value):
    monkeypatch.setenv("GREENPIPE_INLINE", value)
    app = Flask("user_app")  # TESTING off: without the variable, workers
    pipe = Greenpipe(app, handlers=_handlers())
    with app.app_context():
        receipt = pipe.push("echo", json={"n": 1})
    assert receipt.id.startswith("inline"), receipt.id
    with app.app_context():
        assert pipe.status(receipt.id)["status"] == "done"


def test_inline_handlers_run_in_a_fresh_app_context_as_on_a_worker():
    """Outside a request they still have current_app; from a view, no request or g."""
    from flask import current_app, g, has_request_context

    handlers = Handlers()
    seen = []

    @handlers.job("look")
    def look(job):
        seen.append((current_app.name, has_request_context(), hasattr(g, "user")))

    app = Flask("user_app")
    app.config["TESTING"] = True
    pipe = Greenpipe(app, handlers=handlers)

    @app.post("/look")
    def view():
        g.user = "ada"
        return {"id": pipe.push("look").id}, 202

    pipe.push("look")  # a test or a CLI command: no context at all
    assert app.test_client().post("/look").status_code == 202
    assert seen == [("user_app", False, False), ("user_app", False, False)], seen


# -- from the new user's review of routing --------------------------------------


def test_inline_mode_refuses_a_name_its_registry_does_not_run_as_a_web_does():
    """Inline, a name the registry lacks was accepted and then failed with
    UnknownJob, while the web answers 503: a test passed that production
    fails. Now both refuse it at push, naming the name."""
    handlers = Handlers()
    handlers.job("welcome_email")(lambda job: "sent")
    app = Flask("user_app")
    app.config["TESTING"] = True
    pipe = Greenpipe(app, handlers=handlers)

    @app.post("/orders")
    def order():
        return {"id": pipe.push("ship_order").id}, 202

    with app.app_context():
        with pytest.raises(Unavailable, match="no worker runs jobs named 'ship_order'"):
            pipe.push("ship_order")
        assert pipe.status(pipe.push("welcome_email").id)["status"] == "done"
    answer = app.test_client().post("/orders")
    assert answer.status_code == 503, answer.get_data(as_text=True)
    assert "inline registry runs 'welcome_email'" in answer.get_json()["detail"]


def test_a_list_of_handler_specs_is_a_config_error_saying_what_to_do():
    app = Flask("user_app")
    app.config.update(TESTING=True, GREENPIPE_HANDLERS=["jobs:mail", "jobs:warehouse"])
    with pytest.raises(
        ConfigError, match=r"expected one 'package.module:NAME' string, got list"
    ):
        Greenpipe(app).push("welcome_email")


def test_a_forwarded_path_is_a_name_in_utf_8_as_workers_announce_it():
    """pipe.forward("POST", "/résumé") encoded its path as latin-1 while READY
    announces names in UTF-8: a 503 naming '/r\\ufffdsum\\ufffd' although a
    worker runs it (careful reader's review); "/日本" raised UnicodeEncodeError."""
    handlers = Handlers()
    ran = []

    @handlers.job("/résumé")
    def resume(job):
        ran.append((job.name, job.path))
        return "ok"

    app = Flask("user_app")
    app.config["TESTING"] = True
    pipe = Greenpipe(app, handlers=handlers)
    with app.app_context():
        outcome = pipe.pipe.forward("POST", "/résumé", body=b"{}", wait=1)
        assert outcome.status is Status.DONE, outcome
        assert ran == [("/résumé", "/résumé")], ran
        with pytest.raises(Unavailable, match="'/日本'"):
            pipe.pipe.forward("GET", "/日本")
