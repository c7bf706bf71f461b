"""The dashboard's layout in headless Chromium (issue 25, item 8): at 1300 and
1024 px, with failures and dead letters, nothing overflows its column and the
time axis of a fresh web reads in whole seconds.

The page is served through a small proxy that adds one script: after the
page's polls ran, it measures every table, cell and button against its
column and the viewport, reads the time axis' tick labels, and writes the
findings into the DOM, which ``--dump-dom`` returns. Set
GREENPIPE_LAYOUT_SHOTS=<dir> to also write a screenshot per width.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from greenpipe.deadletter import DeadLetters
from greenpipe.jobs import Envelope
from tests.support import chromium, poll_until

MEASURE = b"""<script>
// Measure once the charts have drawn their time axis (a loaded machine may
// answer the page's first polls late): every 250 ms, 40 times at most.
const measure = (tries) => {
  const drawn = typeof charts !== "undefined" && charts
    && (charts.workers.axes[0]._values || []).length;
  if (!drawn && tries < 40) { setTimeout(() => measure(tries + 1), 250); return; }
  const problems = [];
  const page = document.documentElement;
  const view = page.clientWidth;
  if (page.scrollWidth > view + 1) problems.push(`page ${page.scrollWidth} px wide > ${view}`);
  const within = (el, box, what) => {
    const r = el.getBoundingClientRect();
    if (r.right > box.right + 1 || r.left < box.left - 1)
      problems.push(`${what} ${Math.round(r.left)}-${Math.round(r.right)} outside `
                    + `${Math.round(box.left)}-${Math.round(box.right)}`);
  };
  const columns = [...document.querySelectorAll("main section, .two > div")];
  for (const col of columns) within(col, {left: 0, right: view}, "column");
  for (const table of document.querySelectorAll("table")) {
    const box = table.parentElement.getBoundingClientRect();
    within(table, box, `table #${table.id}`);
    for (const el of table.querySelectorAll("th, td, button")) {
      const name = `#${table.id} ${el.tagName} "${el.textContent.slice(0, 24)}"`;
      within(el, box, name);
      const clipped = getComputedStyle(el).textOverflow === "ellipsis";
      if (el.scrollWidth > el.clientWidth + 1 && !clipped)
        problems.push(`${name}: its text overflows the cell`);
    }
  }
  const ticks = typeof charts !== "undefined" && charts
    ? charts.workers.axes[0]._values || [] : null;
  document.body.dataset.layout = JSON.stringify({
    problems, ticks, view,
    failures: document.querySelectorAll("#failures tbody tr").length,
    dead: document.querySelectorAll("#dead tbody tr").length,
  });
};
setTimeout(() => measure(0), 2500);
</script></body>"""


class _Proxy(BaseHTTPRequestHandler):
    """GETs passed on to the web; the dashboard page gets MEASURE added."""

    upstream = 0

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream, timeout=10)
        conn.request("GET", self.path)
        resp = conn.getresponse()
        body = resp.read()
        if self.path == "/dashboard":
            body = body.replace(b"</body>", MEASURE)
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.getheader("Content-Type", ""))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        conn.close()

    def log_message(self, *args) -> None:
        """Quiet: the test's output is its assertions."""


@pytest.fixture
def proxy():
    servers = []

    def start(port: int) -> int:
        handler = type("Proxy", (_Proxy,), {"upstream": port})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server.server_address[1]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _render(url: str, width: int, screenshot: Path | None = None) -> str:
    argv = [chromium(), "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-dev-shm-usage", "--no-first-run", "--virtual-time-budget=15000",
            f"--window-size={width},1400"]  # fmt: skip
    argv += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    done = subprocess.run([*argv, url], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _seed_dead_letters(path: Path, count: int) -> None:
    dead = DeadLetters(str(path))
    for i in range(count):
        job = Envelope(f"feedfacecafe-{i:010x}", b"POST", b"/jobs", b"",
                       b"application/json", b"{}")  # fmt: skip
        job.attempt = 3
        reason = f"lost 3 times: tcp://127.0.0.1:{4400 + i} stopped answering " * 2
        DeadLetters.write(dead, job, reason.strip(), f"tcp://127.0.0.1:{4400 + i}")


@pytest.mark.skipif(
    chromium() is None, reason="chromium is not installed (apt-get install chromium)"
)
def test_no_element_overflows_its_column_at_1300_and_1024_px(
    start_worker, start_web, tmp_path, proxy
):
    dead = tmp_path / "a-dead-letter-file-with-a-long-name" / "dead-letter.jsonl"
    dead.parent.mkdir()
    _seed_dead_letters(dead, 4)
    workers = [start_worker() for _ in range(2)]
    web = start_web(workers, dead_letter=dead)
    error = "ValueError: " + "the invoice total did not match its lines " * 6
    for i in range(6):
        assert web.post("/jobs", {"fail": f"{error} ({i})"})[0] == 202
    poll_until(lambda: web.get("/dashboard/data")[2],
               lambda d: len(d["failures"]) == 6 and len(d["dead_letters"]) == 10,
               10, "6 failures, and 10 kept (6 failed, 4 dead)")  # fmt: skip
    # The time axis has ticks once the history has two samples to span (one a
    # second): rendered sooner, on a fast machine, the chart had none to read.
    poll_until(lambda: web.get("/dashboard/data")[2], lambda d: len(d["samples"]) >= 2,
               10, "two samples in the dashboard's history")  # fmt: skip
    url = f"http://127.0.0.1:{proxy(web.port)}/dashboard"
    shots = os.environ.get("GREENPIPE_LAYOUT_SHOTS")
    for width in (1300, 1024):
        if shots:
            _render(url, width, Path(shots) / f"dashboard-{width}.png")
        dom = _render(url, width)
        found = re.search(r'data-layout="([^"]*)"', dom)
        assert found, f"the measuring script did not run at {width} px"
        layout = json.loads(found[1].replace("&quot;", '"').replace("&amp;", "&"))
        assert (layout["failures"], layout["dead"]) == (6, 10), layout
        ticks = layout["ticks"]
        fractions = [t for t in ticks or [] if re.search(r"\.\d|^:", str(t))]
        assert (layout["problems"], fractions) == ([], []), (
            f"at {width} px: overflowing {layout['problems']}; time-axis ticks "
            f"in fractions of a second {fractions}"
        )
        assert ticks, f"no time-axis ticks read at {width} px: {layout}"
