"""A user's own Flask app served by ``greenpipe.serve(app)``: the framing table's
second target (the first is web.py, the third gunicorn serving web.py).

    python -m tests.security.user_app --port 0 --workers 127.0.0.1:4444

GET / and POST /jobs push one job each, made by the app's own views (not
greenpipe's forwarding blueprint); /stats comes from the extension (opted in:
GREENPIPE_OPS_ROUTES, as web.py).
"""

from gevent import monkey

monkey.patch_all()  # first statement: patching late leaves blocking sockets behind

from flask import Flask, request  # noqa: E402

from greenpipe import Greenpipe, json_errors, serve  # noqa: E402

app = Flask(__name__)
pipe = Greenpipe(app, ops_routes=True)  # the suite counts jobs by /stats
json_errors(app)


@app.get("/")
def index():
    return {"id": pipe.push("visit", body=b"").id}, 202


@app.post("/jobs")
def order():
    return {"id": pipe.push("order", body=request.get_data()).id}, 202


if __name__ == "__main__":
    raise SystemExit(serve(app))
