"""A greenpipe app exposed publicly (issue 31, item 7): job ids no client can
guess, and the operator's routes (/stats, /metrics, /dashboard, re-send) off
a user's app's public port unless asked for; on OPS_PORT they answer.
"""

from __future__ import annotations

import re
import time

import pytest
from flask import Flask

from greenpipe import Greenpipe, Handlers
from greenpipe.admission import Admission
from greenpipe.config import load_web
from greenpipe.jobs import issued_at
from tests.support import PYTHON, ROOT, Proc, Web

OPERATOR = ("/stats", "/metrics", "/dashboard", "/dashboard/data", "/failed")


def _id_bits(ids: list[str]) -> None:
    """Fixed length; a process prefix, the second it was made (8 hex digits),
    then 128 random bits (32 hex digits)."""
    assert len({len(i) for i in ids}) == 1, "fixed length (ab counts lengths)"
    for job_id in ids:
        assert re.fullmatch(r"[0-9a-z]+-[0-9a-f]{40}", job_id), job_id
        made = issued_at(job_id)
        assert made is not None and abs(made - time.time()) < 60, job_id
    suffixes = [int(i.rsplit("-", 1)[1][8:], 16) for i in ids]
    steps = {b - a for a, b in zip(suffixes, suffixes[1:], strict=False)}
    assert 1 not in steps, "no id is the one before it plus one"


@pytest.mark.inprocess  # make test-fast
def test_job_ids_are_unguessable_and_of_a_fixed_length():
    admission = Admission(load_web([], {}), *([None] * 6))  # type: ignore[arg-type]
    ids = [admission.new_id() for _ in range(1000)]
    _id_bits(ids)
    assert len(set(ids)) == 1000
    assert all(admission.owns(i) for i in ids), "the prefix still says whose"


def _user_app(**config) -> Flask:
    handlers = Handlers()

    @handlers.job("order")
    def order(job):
        return {"charged": job.json()["amount"]}

    app = Flask("shop")
    app.config.update(TESTING=True, **config)
    pipe = Greenpipe(app, handlers=handlers)

    @app.post("/orders")
    def create():
        return {"id": pipe.push("order", json={"amount": 5}).id}, 202

    return app


@pytest.mark.inprocess  # make test-fast
def test_a_user_app_serves_no_operator_route_by_default_but_its_jobs():
    client = _user_app().test_client()
    ids = [client.post("/orders").get_json()["id"] for _ in range(20)]
    _id_bits(ids)
    for path in OPERATOR:
        resp = client.get(path)
        assert resp.status_code == 404, (path, resp.status_code)
        assert "GREENPIPE_OPS_ROUTES" in resp.get_data(as_text=True), path
    resend = client.post(f"/dashboard/dead/{ids[0]}/resend",
                         headers={"X-Greenpipe-Action": "resend"})  # fmt: skip
    assert resend.status_code == 404
    resend = client.post("/failed/resend", json={"every": True},
                         headers={"X-Greenpipe-Action": "resend"})  # fmt: skip
    assert resend.status_code == 404, "the kept jobs' re-send is the operator's"
    assert client.get(f"/jobs/{ids[0]}").get_json()["result"] == {"charged": 5}
    assert client.get("/healthz").status_code == 200
    cancel = client.delete(f"/jobs/{ids[0]}", headers={"X-Greenpipe-Action": "cancel"})
    assert cancel.status_code == 409, "a finished job: nothing to cancel"


@pytest.mark.inprocess  # make test-fast
def test_operator_routes_are_opt_in_on_a_user_app():
    client = _user_app(GREENPIPE_OPS_ROUTES=True).test_client()
    assert client.get("/stats").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert client.get("/failed").get_json()["jobs"] == [], "inline: none kept"


USER_APP = """
from gevent import monkey

monkey.patch_all()

from flask import Flask

from greenpipe import Greenpipe, serve

app = Flask("shop")
pipe = Greenpipe(app)


@app.post("/orders")
def create():
    return {"id": pipe.push("order", body=b"{}").id}, 202


if __name__ == "__main__":
    raise SystemExit(serve(app))
"""


def test_a_user_app_serves_operator_routes_on_its_ops_port_only(
    start_worker, procs, tmp_path
):
    worker = start_worker()
    (tmp_path / "shop.py").write_text(USER_APP)
    app = Proc("shop", [PYTHON, str(tmp_path / "shop.py"), "--port", "0",
                        "--ops-port", "0", "--workers", worker.address,
                        "--journal-dir", str(tmp_path / "journal")],
               env={"PYTHONPATH": str(ROOT)})  # fmt: skip
    procs.append(app)
    public = Web(app, int(app.expect(r"serving http://[^:]+:(\d+)", 15)[1]))
    ops = Web(app, int(app.expect(r"own /metrics.*:(\d+)$", 15)[1]))
    app.expect("barrier met", 15)
    job_id = public.post("/orders")[2]["id"]
    for path in ("/stats", "/metrics", "/dashboard"):
        assert public.get(path)[0] == 404, path
        assert ops.get(path)[0] == 200, path
    assert ops.stats()["accepted"] == 1
    assert public.get(f"/jobs/{job_id}")[0] == 200
