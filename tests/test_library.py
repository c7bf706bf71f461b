"""greenpipe as a library: the extension, the core Pipe, Handlers, job status.

Fast tests use Flask's test client in inline mode (no worker); the rest run
real processes: a user's own app (examples/signup) with a registry of named
jobs, and web.py's GET /jobs/<id>, also across processes sharing one port.
"""

from __future__ import annotations

import http.client
import json
import subprocess

import pytest
from flask import Flask

import greenpipe
from greenpipe import ConfigError, Greenpipe, Handlers, Job, Status, Unavailable
from greenpipe.registry import UnknownJob
from tests.support import PYTHON, ROOT, Proc, Web, poll_until

# -- the public API -----------------------------------------------------------


def test_public_names_are_few_importable_and_lazy():
    done = subprocess.run(
        [PYTHON, "-c", "import sys, greenpipe; print(sorted(m for m in sys.modules "
         "if m.startswith(('zmq', 'flask', 'greenpipe.'))))"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.stdout.strip() == "[]", "import greenpipe loads nothing heavy"
    for name in greenpipe.__all__:
        assert getattr(greenpipe, name) is not None, name
    assert {"Greenpipe", "Pipe", "Handlers", "Job", "Unavailable"} <= set(
        dir(greenpipe)
    )
    with pytest.raises(AttributeError, match="no attribute 'Dispatcher'"):
        greenpipe.Dispatcher  # noqa: B018


def test_web_py_uses_only_public_names():
    source = (ROOT / "web.py").read_text()
    imports = [line for line in source.splitlines() if "import" in line]
    greenpipe_imports = [line for line in imports if "greenpipe" in line]
    assert greenpipe_imports == [
        "from greenpipe import patch_all",
        "from greenpipe import Greenpipe, json_errors, serve  # noqa: E402",
    ]


# -- the registry ---------------------------------------------------------------


def _job(name: str, body: bytes = b"{}") -> Job:
    return Job(b"t-1", 1, "", "", "", "application/json", body, name=name)


def test_handlers_route_by_name_default_and_unknown():
    handlers = Handlers()

    @handlers.job("add")
    def add(job):
        return sum(job.json())

    assert add(_job("add", b"[1, 2]")) == 3, "the decorator returns the function"
    assert handlers(_job("add", b"[1, 2]")) == 3
    with pytest.raises(
        UnknownJob, match=r"no handler for job name 'mul'; .*knows 'add'"
    ):
        handlers(_job("mul"))
    with pytest.raises(ValueError, match="already has a handler"):
        handlers.add("add", add)
    handlers.default(lambda job: f"default for {job.name}")
    assert handlers(_job("mul")) == "default for mul"
    forwarded = Job(b"t-2", 1, "POST", "/resize", "", "", b"")
    assert forwarded.name == "/resize", "a forwarded request is named by its path"


# -- the extension, inline (no workers) -------------------------------------------


def _inline_app(**config) -> tuple[Flask, Greenpipe]:
    handlers = Handlers()

    @handlers.job("double")
    def double(job):
        return {"twice": job.json()["n"] * 2}

    @handlers.job("boom")
    def boom(job):
        raise RuntimeError("it broke")

    app = Flask("user_app")
    app.config.update(TESTING=True, **config)
    pipe = Greenpipe(app, handlers=handlers)

    @app.post("/double")
    def view():
        job = pipe.push("double", json={"n": 21})
        return {"id": job.id}, 202

    @app.post("/boom")
    def boom_view():
        return {"id": pipe.push("boom", json={}).id}, 202

    @app.post("/unknown")
    def unknown_view():
        return {"id": pipe.push("nobody", body="x").id}, 202

    return app, pipe


def test_inline_mode_runs_views_without_workers_and_records_status():
    app, pipe = _inline_app()
    client = app.test_client()
    resp = client.post("/double")
    assert resp.status_code == 202
    job_id = resp.get_json()["id"]
    status = client.get(f"/jobs/{job_id}").get_json()
    assert status["status"] == "done" and status["result"] == {"twice": 42}
    failed = client.get(f"/jobs/{client.post('/boom').get_json()['id']}").get_json()
    assert failed["status"] == "failed" and "RuntimeError: it broke" in failed["error"]
    unknown = client.post("/unknown")  # refused as a web refuses it: no worker runs it
    assert unknown.status_code == 503
    assert "no worker runs jobs named 'nobody'" in unknown.get_json()["detail"]
    missing = client.get("/jobs/inline0-nothing")
    assert (
        missing.status_code == 404 and "never accepted" in missing.get_json()["detail"]
    )
    with app.app_context():
        outcome = pipe.push("double", json={"n": 1}, wait=1)
        assert outcome.status is Status.OK and outcome.result == {"twice": 2}


def test_one_word_for_each_state_of_a_job():
    """Defect 4 of issue 18 (and 3 of 25): push(wait=) and GET /jobs/<id> agree."""
    app, pipe = _inline_app()
    client = app.test_client()
    with app.app_context():
        outcome = pipe.push("double", json={"n": 2}, wait=1)
    record = client.get(f"/jobs/{outcome.id}").get_json()
    assert outcome.status == record["status"] == "done", (outcome, record)
    assert Status.OK is Status.DONE, "the old name stays an alias"
    assert {s.value for s in Status} >= {"queued", "in_flight", "done", "failed",
                                         "dead"}  # fmt: skip
    with app.app_context(), pytest.raises(ValueError, match="wait must be a number"):
        pipe.push("double", json={"n": 2}, wait=-1)


def test_metrics_in_inline_mode_answer_the_inline_figures():
    """Defect 2 of issue 18: /metrics raised AttributeError in inline mode."""
    app, _ = _inline_app(GREENPIPE_OPS_ROUTES=True)  # the operator's: opted in
    client = app.test_client()
    client.post("/double")
    client.post("/boom")
    resp = client.get("/metrics")
    assert resp.status_code == 200, resp.get_data(as_text=True)[:300]
    text = resp.get_data(as_text=True)
    assert "greenpipe_jobs_accepted_total 2.0" in text
    assert "greenpipe_jobs_failed_total 1.0" in text


def test_a_result_that_is_not_json_is_shown_as_text():
    from greenpipe.finished import FinishedJobs

    finished = FinishedJobs(10, 60)
    finished.add("a", Status.DONE, "w", 1, b'{"n": 1}')
    finished.add("b", Status.DONE, "w", 1, b"\xffnot json")
    assert finished.get("a")["result"] == {"n": 1}
    assert finished.get("b")["result_text"] == "\ufffdnot json"
    assert "result" not in finished.get("b")


def test_prefix_and_routes_off():
    app, _ = _inline_app(GREENPIPE_PREFIX="/_gp")
    client = app.test_client()
    assert client.get("/_gp/healthz").status_code == 200
    assert client.get("/healthz").status_code == 404
    app, _ = _inline_app(GREENPIPE_ROUTES=False)
    assert app.test_client().get("/stats").status_code == 404


def test_push_validates_its_arguments_naming_the_problem():
    app, pipe = _inline_app()
    with app.app_context():
        with pytest.raises(ValueError, match="not both"):
            pipe.push("double", json={}, body=b"x")
        with pytest.raises(ValueError, match="non-empty str"):
            pipe.push("", json={})
        with pytest.raises(ValueError, match="not JSON-serialisable"):
            pipe.push("double", json={1, 2})
        with pytest.raises(ValueError, match=r"over MAX_BODY \(1048576\)"):
            pipe.push("double", body=b"x" * (1 << 20 + 1))


def test_a_handler_name_no_push_could_carry_is_refused_at_declaration():
    """A name over 255 bytes was registered, left out of READY (it cannot be
    announced) and refused at every push: now refused where it is written."""
    handlers = Handlers()
    handlers.job("é" * 127)(lambda job: None)  # 254 bytes: fine
    with pytest.raises(
        ValueError, match=r"256 bytes of UTF-8; a job name is at most 255"
    ):
        handlers.job("é" * 128)(lambda job: None)
    assert handlers.names == ["é" * 127]
    # A lone surrogate (from os.fsdecode'd text) stopped the worker at start,
    # with a bare UnicodeEncodeError from READY's encoding (found in review).
    with pytest.raises(
        ValueError, match=r"not valid UTF-8 text \(surrogates not allowed"
    ):
        handlers.job("report-\udcff")(lambda job: None)


def test_settings_come_from_app_config_and_a_bad_one_is_named():
    app = Flask("configured")
    app.config.update(GREENPIPE_WORKERS=["127.0.0.1:5001", "127.0.0.1:5002"],
                      GREENPIPE_MAX_PENDING=7)  # fmt: skip
    pipe = Greenpipe(app)
    assert app.extensions["greenpipe"].pipe is None, "nothing opened at init_app"
    settings = pipe.settings(app)
    assert [str(w) for w in settings.workers] == [
        "tcp://127.0.0.1:5001",
        "tcp://127.0.0.1:5002",
    ]
    assert settings.max_pending == 7
    bad = Flask("bad")
    bad.config["GREENPIPE_MAX_PENDING"] = "lots"
    pipe = Greenpipe(bad)
    with pytest.raises(
        ConfigError,
        match=r"GREENPIPE_MAX_PENDING: expected a whole .*'lots' \(app.config",
    ):
        pipe.start(bad)


def test_no_worker_gives_a_json_503_in_the_users_own_route():
    app = Flask("nobody_home")
    app.config.update(GREENPIPE_WORKERS="127.0.0.1:1", GREENPIPE_READY_TIMEOUT=0.05,
                      GREENPIPE_DEAD_LETTER="/dev/null", GREENPIPE_JOURNAL_DIR="off")  # fmt: skip
    pipe = Greenpipe(app)

    @app.get("/go")
    def go():
        return {"id": pipe.push("anything", json={}).id}, 202

    try:
        resp = app.test_client().get("/go")
        assert resp.status_code == 503 and resp.headers["Retry-After"] == "2"
        assert "0 of 1 workers READY" in resp.get_json()["detail"]
        with app.app_context(), pytest.raises(Unavailable):
            pipe.push("anything", json={})
    finally:
        assert pipe.stop(app, 0) == 0


# -- real processes ---------------------------------------------------------------


def _post(web: Web, path: str, payload) -> tuple[int, dict]:
    status, _, body = web.post(path, payload)
    return status, body


def test_a_users_app_pushes_named_jobs_to_a_registry_in_its_app_context(
    start_worker, procs, tmp_path
):
    workers = [
        start_worker(
            handler="examples.signup.jobs:handlers", app="examples.signup.app:app"
        )
        for _ in range(2)
    ]
    web_proc = Proc("signup", [PYTHON, "-m", "examples.signup.app", "--port", "0",
                    "--workers", ",".join(w.address for w in workers),
                    "--dead-letter", str(tmp_path / "dl.jsonl"),
                    "--journal-dir", str(tmp_path / "journal")])  # fmt: skip
    procs.append(web_proc)
    port = int(web_proc.expect(r"serving http://[^:]+:(\d+)", 15)[1])
    web_proc.expect("barrier met", 15)
    web = Web(web_proc, port)
    status, body = _post(web, "/signup", {"email": "ada@example.com"})
    assert status == 202, body
    done = poll_until(lambda: web.get(f"/jobs/{body['id']}")[2],
                      lambda s: s.get("status") == "done", 10, "the welcome mail done")  # fmt: skip
    assert done["result"] == {
        "sent_to": "ada@example.com",
        "from": "hello@example.com",
    }
    status, _, waited = web.request("POST", "/images?wait=5", json.dumps(
        {"name": "cat.png", "width": 800, "height": 600}),
        {"Content-Type": "application/json"})  # fmt: skip
    assert (status, waited["thumbnail"]) == (200, "cat.png@200x150"), waited
    status, _, failed = web.request("POST", "/images?wait=5", json.dumps(
        {"name": "x", "width": 0, "height": 1}), {"Content-Type": "application/json"})  # fmt: skip
    assert status == 502 and "cannot resize to 0x1" in failed["error"], failed
    assert any(w.proc.matches("welcome mail from hello@example.com") for w in workers)


def test_job_status_through_its_life_and_404(start_worker, start_web):
    worker = start_worker()
    web = start_web([worker])
    status, _, body = web.post("/jobs", {"sleep": 0.5, "result": {"n": 1}})
    assert status == 202 and len(body["id"]) == len("0123abcd-") + 8 + 32
    seen = web.get(f"/jobs/{body['id']}")[2]
    assert seen["status"] in ("queued", "in_flight"), seen
    done = poll_until(lambda: web.get(f"/jobs/{body['id']}")[2],
                      lambda s: s["status"] == "done", 10, "the job done")  # fmt: skip
    assert done["worker"].endswith(str(worker.port)) and done["attempt"] == 1
    assert done["result"] == {"n": 1}
    code, _, missing = web.get("/jobs/deadbeef-0000000001")
    assert code == 404 and "never accepted, or its record was" in missing["detail"]


def test_ids_have_a_fixed_length_so_ab_counts_no_length_failures(
    start_worker, start_web
):
    web = start_web([start_worker()])
    conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=10)
    lengths = set()
    for _ in range(40):
        conn.request("GET", "/")
        resp = conn.getresponse()
        lengths.add(len(resp.read()))
    conn.close()
    assert len(lengths) == 1, lengths
