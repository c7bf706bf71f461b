"""greenpipe web: turns every HTTP request into one job for the workers.

Serves    HTTP      http://HOST:port        GET /, POST /jobs, GET|DELETE /jobs/<id>,
                                            GET /healthz; and the operator's
                                            /stats, /metrics, /dashboard
Connects  DEALER    each of WORKERS         JOBS / PING out; READY / ACKS / HEARTBEAT in
Run       python web.py      (or: python web.py --port 0 --workers 127.0.0.1:4444)

This file is also the example to copy: a Flask app written with greenpipe's
public API only.
"""

from greenpipe import patch_all

patch_all()  # first statement: gevent's monkey.patch_all() (patching late leaves
# blocking sockets behind), with its plugin lookups read once: a faster start

from flask import Flask  # noqa: E402

from greenpipe import Greenpipe, json_errors, serve  # noqa: E402

app = Flask("greenpipe")
# Settings: app.config GREENPIPE_*, environment, flags. This is the operator's
# own server (loopback by default), so /stats, /metrics and /dashboard answer on
# its port; your app leaves ops_routes off: they answer on OPS_PORT only.
pipe = Greenpipe(app, ops_routes=True)
app.register_blueprint(pipe.forwarding())  # GET / and POST /jobs: one job each
json_errors(app)  # every error as JSON that says what to do


def main(argv: list[str] | None = None) -> int:
    return serve(app, argv)  # flags as before; SIGTERM drains, then exits 0


if __name__ == "__main__":
    raise SystemExit(main())
