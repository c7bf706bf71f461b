"""A web whose processes refuse their configuration under WEB_PROCESSES (exit 2).

The supervisor reads the same settings and finds nothing wrong; each child,
started with the supervisor's GREENPIPE_READY_FD, gets a misspelt key in its
app.config (as an app reading a per-process configuration might), which
UNKNOWN_SETTINGS=refuse refuses.

Run  UNKNOWN_SETTINGS=refuse python -m tests.child_config_error --port 0 --workers HOST:PORT --web-processes 2
"""

from gevent import monkey

monkey.patch_all()  # first statement: patching late leaves blocking sockets behind

import os  # noqa: E402

from greenpipe import serve  # noqa: E402
from greenpipe.serving import default_app  # noqa: E402
from greenpipe.supervisor import READY_ENV  # noqa: E402

app = default_app()
if READY_ENV in os.environ:  # a child of the supervisor
    app.config["GREENPIPE_MAX_PENDNG"] = 5

if __name__ == "__main__":
    raise SystemExit(serve(app))
