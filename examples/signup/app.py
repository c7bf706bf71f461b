"""The signup example: a user's own Flask app whose routes push named jobs.

    python -m examples.signup.app --port 5000 --workers 127.0.0.1:4444

POST /signup {"email": ...}                      -> welcome_email job, 202 {"id"}
POST /images {"name": ..., "width":, "height":}  -> resize_image job, 202 {"id"}
POST /images?wait=5                              -> waits for the thumbnail
GET  /jobs/<id>, /healthz                        -> from greenpipe (GREENPIPE_PREFIX)
GET  /stats, /metrics, /dashboard                -> on --ops-port only (OPS_PORT)
"""

from gevent import monkey

monkey.patch_all()  # first statement: patching late leaves blocking sockets behind

from flask import Flask, request  # noqa: E402

from examples.signup.jobs import handlers  # noqa: E402
from greenpipe import Greenpipe, Status, serve  # noqa: E402

app = Flask(__name__)
app.config["MAIL_SENDER"] = "hello@example.com"
pipe = Greenpipe(app, handlers=handlers)  # handlers: for inline mode in tests


@app.post("/signup")
def signup():
    payload = request.get_json(silent=True) or {}
    if "@" not in str(payload.get("email", "")):
        return {"error": "bad request", "detail": 'send {"email": "..."}'}, 400
    job = pipe.push("welcome_email", json={"email": payload["email"]})
    return {"id": job.id}, 202


@app.post("/images")
def images():
    spec = request.get_json(silent=True) or {}
    wait = float(request.args.get("wait", 0))
    outcome = pipe.push("resize_image", json=spec, wait=wait)
    if not wait:
        return {"id": outcome.id}, 202
    if outcome.status is Status.DONE:
        return {"id": outcome.id, "thumbnail": outcome.result["thumbnail"]}, 200
    return {"id": outcome.id, "status": outcome.status, "error": outcome.error}, 502


if __name__ == "__main__":
    raise SystemExit(serve(app))
