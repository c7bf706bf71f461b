"""Every code block of the README, docs/ and examples/*/README.md, run as written.

The harness (tests/docs_harness.py) finds the blocks and their markers; the
recipes below run the marked ones in a checkout-like temporary directory on
free ports, each wait with its own deadline. `pytest -rs tests/test_readme.py`
prints why each block that is not run is not.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from greenpipe.testing import PYTHON, ROOT, Proc, poll_until
from tests.docs_harness import Block, Shell, all_blocks, exec_form

pytestmark = pytest.mark.timeout(120)
BLOCKS = all_blocks()
TIMESTAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"  # a log line's time


def call(port: int, method: str, path: str, body: Any = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:  # fmt: skip
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    data = json.dumps(body).encode() if body is not None else None
    sent = {"Content-Type": "application/json"} if data else {}
    conn.request(method, path, body=data, headers={**sent, **(headers or {})})
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    try:
        return resp.status, json.loads(raw)
    except ValueError:
        return resp.status, raw.decode(errors="replace")


def healthy(port: int, what: str, timeout: float = 20.0) -> None:
    def probe() -> int:
        try:
            return call(port, "GET", "/healthz")[0]
        except OSError:
            return 0

    poll_until(probe, lambda code: code == 200, timeout, f"{what}: /healthz 200")


def need(tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"needs {tool}: apt-get install {package}")


@pytest.fixture(scope="module")
def shell(tmp_path_factory: pytest.TempPathFactory) -> Shell:
    return Shell(tmp_path_factory.mktemp("checkout"))


@pytest.fixture(scope="module")
def original(shell: Shell) -> Iterator[list[Proc]]:
    """README "As in the original": three workers and a web, four terminals."""
    block = _only("original")
    lines = block.commands()
    procs = []
    try:
        for i, line in enumerate(lines):
            web = "web.py" in line
            procs.append(shell.start(line, "web" if web else f"worker{i + 1}",
                                     shell.web_defaults() if web else None))  # fmt: skip
        healthy(shell.port(4567), f"{block.where}: the web after its barrier")
        yield procs
    finally:
        for proc in procs:
            proc.stop(timeout=8)


def _only(name: str) -> Block:
    found = [b for b in BLOCKS if b.kind == "run" and b.argument == name]
    assert found, f"no block marked <!-- docs: run {name} -->"
    return found[0]


# -- the recipes: one per documented situation -----------------------------------


def run_original(block: Block, request: pytest.FixtureRequest) -> None:
    """Stop one worker with Ctrl-C (SIGINT): it says goodbye; start it again."""
    shell: Shell = request.getfixturevalue("shell")
    procs: list[Proc] = request.getfixturevalue("original")
    web_port = shell.port(4567)
    second = procs[1]
    second.signal(2)  # Ctrl-C in its terminal
    assert second.wait_exit(8) == 0, second.tail()

    def state() -> str:
        return call(web_port, "GET", "/stats")[1]["workers"][1]["state"]

    poll_until(state, lambda s: s != "ready", 10, "the stopped worker leaving")
    for _ in range(6):
        assert call(web_port, "POST", "/jobs", {"n": 1})[0] == 202
    procs[1] = shell.start(block.commands()[1], "worker2 again")
    poll_until(state, lambda s: s == "ready", 10, "the restarted worker READY")


def run_curls(block: Block, request: pytest.FixtureRequest) -> None:
    need("curl", "curl")
    shell: Shell = request.getfixturevalue("shell")
    procs: list[Proc] = request.getfixturevalue("original")
    outputs = [shell.run(line, timeout=20) for line in block.commands()]
    assert "HTTP/1.1 202" in outputs[0] and '"id"' in outputs[0], outputs[0]
    assert "HTTP/1.1 202" in outputs[1], outputs[1]
    assert '"result"' in outputs[2], outputs[2]  # Prefer: wait=5 answers with it
    assert '"accepted"' in outputs[3], outputs[3]
    # "watch each worker log one line per job"
    seen = [p.matches(r"INFO greenpipe.jobs: worker :\d+: job \S+ attempt 1: (GET|POST) /")
            for p in procs[:3]]  # fmt: skip
    assert sum(map(len, seen)) >= 3, [p.tail(5) for p in procs]


def run_delays(block: Block, request: pytest.FixtureRequest) -> None:
    """The three lines in one terminal: a job scheduled 30 s ahead, cancelled."""
    need("curl", "curl")
    shell: Shell = request.getfixturevalue("shell")
    request.getfixturevalue("original")
    out = shell.run("\n".join(block.commands()), timeout=20)
    assert '"status":"scheduled"' in out.replace(" ", "") and "due_at" in out, out
    assert '"status":"cancelled"' in out.replace(" ", ""), out


def run_library(block: Block, request: pytest.FixtureRequest) -> None:
    """The whole "Use it in your Flask app" section, in a clean virtualenv."""
    tmp: Path = request.getfixturevalue("tmp_path")
    shell = Shell(tmp)  # its own free ports
    section = [b for b in BLOCKS if b.kind == "run" and b.argument == "library"]
    app_code, commands, test_code = (b.text for b in section)
    venv = _clean_venv_with_greenpipe(tmp)
    app = tmp / "myapp"
    app.mkdir()
    (app / "myapp.py").write_text(shell.sub(app_code))
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp)}
    procs = []
    try:
        for i, line in enumerate(Block(block.path, 0, commands, "", "").commands()):
            procs.append(Proc(f"library {i + 1}", ["bash", "-c", exec_form(shell.sub(line))],
                              env=env, cwd=app))  # fmt: skip
        for worker in procs[:2]:
            worker.expect(r"listening on tcp://", timeout=20)
        port = shell.port(5000)
        healthy(port, "python myapp.py --port 5000")
        code, answer = call(port, "POST", "/signup", {"email": "ada@example.com"})
        assert code == 202, answer
        poll_until(lambda: call(port, "GET", f"/jobs/{answer['id']}")[1],
                   lambda job: job.get("status") == "done", 10,
                   "GET /jobs/<id> saying done")  # fmt: skip
        done = call(port, "GET", f"/jobs/{answer['id']}")[1]
        assert done["result"] == {"sent_to": "ada@example.com"}, done
    finally:
        for proc in procs:
            proc.stop(timeout=8)
    (app / "check.py").write_text(
        "from myapp import app\n" + test_code + "\ntest_signup()\nprint('passed')\n"
    )
    check = subprocess.run([str(venv / "bin" / "python"), "check.py"], cwd=app,
                           env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert check.returncode == 0 and "passed" in check.stdout, check.stderr[-2000:]


def _clean_venv_with_greenpipe(tmp: Path) -> Path:
    """A new virtualenv with `pip install` of a copy of the checkout, offline.

    The pinned dependencies come from the suite's own environment through a
    .pth file (no network, as tests/test_package.py); greenpipe itself only
    from the install, not from the checkout.
    """
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)],
                   check=True, timeout=60)  # fmt: skip
    site = next((venv / "lib").glob("python3*/site-packages"))
    deps = next(Path(PYTHON).parent.parent.glob("lib/python3*/site-packages"))
    (site / "suite-deps.pth").write_text(f"{deps}\n")
    source = tmp / "source"
    shutil.copytree(ROOT / "greenpipe", source / "greenpipe",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    build = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps",
         "--no-build-isolation", "--no-index", "--disable-pip-version-check",
         str(source)], capture_output=True, text=True, timeout=120, cwd=tmp,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]
    assert (venv / "bin" / "greenpipe").exists(), (
        "pip install wrote no greenpipe script"
    )
    typed = next(venv.glob("lib/python3*/site-packages/greenpipe/py.typed"), None)
    assert typed is not None, "the installed package has no py.typed (package data)"
    return venv


def run_security(block: Block, request: pytest.FixtureRequest) -> None:
    """Keys, allowlist, the worker and the web as printed; the web gets in."""
    tmp: Path = request.getfixturevalue("tmp_path")
    shell = Shell(tmp)
    procs = []
    try:
        for line in block.commands():
            if "server.py" in line:
                procs.append(shell.start(line, "curve worker"))
                procs[-1].expect("listening on", timeout=20)
            elif "web.py" in line:
                procs.append(shell.start(line, "curve web", shell.web_defaults()))
                procs[-1].expect(r"CURVE on: this web's key", timeout=20)
                procs[-1].expect("barrier met", timeout=20)
            else:
                shell.run(line)
        assert call(shell.port(4567), "POST", "/jobs", {"n": 1},
                    {"Prefer": "wait=5"})[0] == 200  # fmt: skip
    finally:
        for proc in reversed(procs):
            proc.stop(timeout=8)


def run_several_webs(block: Block, request: pytest.FixtureRequest) -> None:
    """Both ways, one after the other on the web port, with the original's workers."""
    shell = Shell(request.getfixturevalue("tmp_path"))  # its own ports
    workers = [shell.start(line, f"worker{i + 1}")
               for i, line in enumerate(_only("original").commands()[:3])]  # fmt: skip
    try:
        for i, line in enumerate(block.commands()):
            web = shell.start(line, f"several webs {i + 1}", shell.web_defaults())
            try:
                # Both processes serve and met their barriers before the stop
                # (a gunicorn worker still booting at SIGTERM may hang: see the
                # report of issue 23).
                web.expect("barrier met", timeout=20, times=2)
                healthy(shell.port(4567), f"{block.where} line {i + 1}")
                for _ in range(4):
                    assert call(shell.port(4567), "GET", "/")[0] == 202
            finally:
                web.stop(timeout=10)
    finally:
        for worker in workers:
            worker.stop(timeout=8)


def run_loadtest(block: Block, request: pytest.FixtureRequest) -> None:
    """Both ab-style lines, with -n 300 for -n 100000 (a minute) to keep it short."""
    shell: Shell = request.getfixturevalue("shell")
    request.getfixturevalue("original")
    for line in block.commands():
        out = shell.run(line.replace("-n 100000", "-n 300"), timeout=90)
        assert "Verdict: all 300 accepted jobs acknowledged" in out, out[-2000:]


def run_locust(block: Block, request: pytest.FixtureRequest) -> None:
    """Headless for 3 s instead of 5 minutes; the UI answers on its port."""
    shell: Shell = request.getfixturevalue("shell")
    request.getfixturevalue("original")
    headless, ui = block.commands()
    shell.run(headless.replace("-t 5m", "-t 3s"), timeout=60)
    proc = shell.start(ui, "locust ui")
    try:
        healthy_ui = lambda: _status(shell.port(8089), "/")  # noqa: E731
        poll_until(healthy_ui, lambda code: code == 200, 20, "Locust's UI on its port")
    finally:
        proc.expected_exit = None  # locust exits 0 or 1 after SIGTERM by version
        proc.stop(timeout=10)


def _status(port: int, path: str) -> int:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", path)
        return conn.getresponse().status
    except OSError:
        return 0


def _sum_prints(out: str) -> None:
    lines = [line for line in out.splitlines() if line.startswith("sum ")]
    assert lines == [f"sum {k * (k + 1) // 2} (+{k})" for k in range(1, 101)], out
    assert out.splitlines()[-1] == "done!", out


def _mapreduce_prints(out: str) -> None:
    assert "sink: 1000 tasks, result 333833500" in out, out
    assert "ventilator: expected 333833500" in out, out
    assert "tasks per worker: w1 250, w2 250, w3 250, w4 250; duplicates 0" in out
    assert re.search(r"in \d+\.\d{3} s", out), out


def _food_delivery_prints(out: str) -> None:
    assert "delivered 200 of 200 orders (min 20, max 20)" in out, out


def _cluster_prints(out: str) -> None:
    assert "master: 4 workers ready before the first job" in out, out
    assert "the first 4 jobs went to 4 different workers" in out, out
    assert "2000 of 2000 results" in out, out
    assert "per worker: worker1 500, worker2 500, worker3 500, worker4 500" in out
    peaks = [int(p) for p in re.findall(r"at most (\d+) in flight \(limit 10\)", out)]
    assert len(peaks) == 4 and max(peaks) <= 10, out


# What an example's documented command prints, checked where it is run (the
# figures its README shows); the examples' other pieces: tests/test_examples.py.
WHAT_IT_PRINTS: dict[str, Callable[[str], None]] = {
    ".venv/bin/python -m examples.sum": _sum_prints,
    ".venv/bin/python -m examples.mapreduce": _mapreduce_prints,
    ".venv/bin/python -m examples.food_delivery": _food_delivery_prints,
    ".venv/bin/python -m examples.cluster": _cluster_prints,
}


def run_completes(block: Block, request: pytest.FixtureRequest) -> None:
    """Commands that finish by themselves: each exits 0 within its deadline,
    and an example's default run prints the figures its README shows."""
    shell: Shell = request.getfixturevalue("shell")
    for line in block.commands():
        command = line.split("#", 1)[0].strip()
        if command not in _completed:  # the README and an example's README share some
            out = shell.run(line, timeout=60)
            if command in WHAT_IT_PRINTS:
                WHAT_IT_PRINTS[command](out)
            _completed.add(command)


def run_pull_workers(block: Block, request: pytest.FixtureRequest) -> None:
    """Two plain PULL workers and a web feeding them and a greenpipe worker."""
    tmp: Path = request.getfixturevalue("tmp_path")
    shell = Shell(tmp)
    first, second, web_line = block.commands()
    procs = [shell.start(first, "pull 1"), shell.start(second, "pull 2")]
    try:
        # The web's third worker is a greenpipe one on 4444, as with `make run`.
        procs.append(shell.start("port=4444 .venv/bin/python server.py", "worker"))
        procs.append(shell.start(web_line, "web", shell.web_defaults()))
        healthy(shell.port(4567), "web.py feeding plain PULL workers")
        for i in range(3):
            assert call(shell.port(4567), "POST", "/jobs", {"n": i})[0] == 202
        procs[0].expect(r"job \S+ \(\d+ bytes\)", timeout=10)
        procs[1].expect(r"job \S+ \(\d+ bytes\)", timeout=10)
    finally:
        for proc in reversed(procs):
            proc.stop(timeout=8)


def run_config_error(block: Block, request: pytest.FixtureRequest) -> None:
    """The documented message, from the documented mistake (MAX_BODY=lots)."""
    shell: Shell = request.getfixturevalue("shell")
    out = shell.run("MAX_BODY=lots .venv/bin/python web.py", code=2, timeout=30)
    # The documented line with its time: any time, to the millisecond, in UTC.
    time, line = block.text.strip().split(" ", 1)
    assert re.fullmatch(TIMESTAMP, time), block.text
    assert re.search(TIMESTAMP + " " + re.escape(line), out), out


def run_periodic(block: Block, request: pytest.FixtureRequest) -> None:
    """The "Periodic jobs" module and its two terminals: a tick runs on the worker.

    every=10 becomes every=1, so a tick comes within the test's deadline.
    """
    tmp: Path = request.getfixturevalue("tmp_path")
    shell = Shell(tmp)
    code, commands = (b for b in BLOCKS if b.kind == "run" and b.argument == "periodic")
    assert "every=10" in code.text, code.where
    (tmp / "myjobs.py").write_text(code.text.replace("every=10", "every=1"))
    worker_line, scheduler_line = commands.commands()
    procs = [shell.start(worker_line, "worker")]
    try:
        procs[0].expect(r"listening on tcp://", timeout=20)
        procs.append(shell.start(scheduler_line, "scheduler"))
        started = procs[1].expect(r"pushing 3 periodic jobs .*: (.*)", timeout=20)[1]
        assert "nightly_report cron '0 3 * * *' Europe/Paris, missed=latest" in started
        assert "send_digest cron '0 8 * * mon' UTC" in started, started
        procs[0].expect(r"INFO myjobs: polling the support inbox", timeout=20, times=2)
    finally:
        for proc in reversed(procs):
            proc.stop(timeout=8)
    assert (tmp / ".greenpipe-schedule" / "scheduler.lock").exists()


def run_routing(block: Block, request: pytest.FixtureRequest) -> None:
    """shop.py and its three terminals: each name runs on its own worker only,
    a name nobody runs is refused at once with the documented answer."""
    tmp: Path = request.getfixturevalue("tmp_path")
    shell = Shell(tmp)
    code, commands = (b for b in BLOCKS if b.kind == "run" and b.argument == "routing")
    (tmp / "shop.py").write_text(code.text)
    mail_line, shipping_line, web_line = commands.commands()
    procs = [shell.start(mail_line, "mail"), shell.start(shipping_line, "shipping")]
    try:
        for worker in procs:
            worker.expect(r"listening on tcp://", timeout=20)
        procs.append(shell.start(web_line, "shop"))
        port = shell.port(5000)
        healthy(port, "python shop.py --port 5000")
        for _ in range(2):
            assert (
                call(port, "POST", "/jobs/welcome_email", {"email": "ada@x"})[0] == 202
            )
            assert call(port, "POST", "/jobs/ship_order", {"order": 42})[0] == 202
        procs[0].expect(r"INFO shop: welcome mail to ada@x", timeout=10, times=2)
        procs[1].expect(r"INFO shop: shipping order 42", timeout=10, times=2)
        assert not procs[0].matches("shipping order") and not (
            procs[1].matches("welcome mail")
        ), "a job went to a worker that does not run its name"
        status, answer = call(port, "POST", "/jobs/refund", {})
        documented = next(b for b in BLOCKS if "jobs named 'refund'" in b.text)
        assert status == 503 and answer == json.loads(documented.text), answer
    finally:
        for proc in reversed(procs):
            proc.stop(timeout=8)


def run_queues(block: Block, request: pytest.FixtureRequest) -> None:
    """Two workers, one listening on reports, web.py and two curls: the report
    runs on its worker only, the other job on the default one; a queue nobody
    listens on is refused with the documented answer."""
    need("curl", "curl")
    shell = Shell(request.getfixturevalue("tmp_path"))
    plain_line, reports_line, web_line, to_reports, to_default = block.commands()
    procs = [shell.start(plain_line, "plain"), shell.start(reports_line, "reports")]
    try:
        for worker in procs:
            worker.expect(r"listening on tcp://", timeout=20)
        procs[1].expect(r"queues reports\)", timeout=5)
        procs.append(shell.start(web_line, "web", shell.web_defaults()))
        port = shell.port(4567)
        healthy(port, "python web.py --port 4567")
        report = json.loads(shell.run(to_reports, timeout=20))["id"]
        other = json.loads(shell.run(to_default, timeout=20))["id"]
        procs[1].expect(rf"job {report} attempt 1: POST /jobs", timeout=10)
        procs[0].expect(rf"job {other} attempt 1: POST /jobs", timeout=10)
        assert not procs[0].matches(report) and not procs[1].matches(other)
        status, answer = call(port, "POST", "/jobs", {}, {"Greenpipe-Queue": "mail"})
        documented = next(b for b in BLOCKS if "on queue 'mail'" in b.text)
        assert status == 503 and answer == json.loads(documented.text), answer
    finally:
        for proc in reversed(procs):
            proc.stop(timeout=8)


@contextmanager
def _handlers_worker_and_web(
    block: Block, request: pytest.FixtureRequest, module: str
) -> Iterator[tuple[Shell, list[str]]]:
    """A section of a code block (saved as `module`) and its commands, the
    first two a worker running it and web.py: both started and ready, then
    (the shell, the remaining command lines); both stopped at the end. Runs
    once per section, with its first block."""
    need("curl", "curl")
    if block.argument in _ran:
        pytest.skip(f"{block.where}: run with the first block of its section")
    _ran.add(block.argument)
    tmp: Path = request.getfixturevalue("tmp_path")
    shell = Shell(tmp)
    code, commands = (
        b for b in BLOCKS if b.kind == "run" and b.argument == block.argument
    )
    (tmp / module).write_text(code.text)
    worker_line, web_line, *lines = commands.commands()
    procs = [shell.start(worker_line, "worker")]
    try:
        procs[0].expect(r"listening on tcp://", timeout=20)
        procs.append(shell.start(web_line, "web", shell.web_defaults()))
        healthy(shell.port(4567), "python web.py --workers 127.0.0.1:4444")
        yield shell, lines
    finally:
        for proc in reversed(procs):
            proc.stop(timeout=8)


def run_failed_jobs(block: Block, request: pytest.FixtureRequest) -> None:
    """billing.py and its six lines: a charge fails and is kept, is listed,
    and once the card is fixed is re-sent and runs; the printed lines are the
    documented ones."""
    with _handlers_worker_and_web(block, request, "billing.py") as (shell, lines):
        curl, listing, touch, resend = lines
        job_id = json.loads(shell.run(curl, timeout=20))["id"]
        poll_until(lambda: call(shell.port(4567), "GET", f"/jobs/{job_id}")[1],
                   lambda r: r.get("status") == "failed", 20,
                   f"job {job_id} failed (card declined)")  # fmt: skip
        listed = shell.run(listing, timeout=30)
        shell.run(touch)
        resent = shell.run(resend, timeout=30)
        new_id = resent.split()[3]
        poll_until(lambda: call(shell.port(4567), "GET", f"/jobs/{new_id}")[1],
                   lambda r: r.get("result") == {"charged": 42}, 20,
                   f"the re-sent job {new_id} charged")  # fmt: skip
    printed = next(b for b in BLOCKS if b.kind == "output" and "1 kept in" in b.text)
    expected = printed.text.strip().splitlines()
    got = (listed + resent).strip().splitlines()
    assert len(got) == len(expected), got
    masked = [re.sub(r"\S*-[0-9a-f]{40}", "<id>", line) for line in got]
    masked = [re.sub(r"^\S+T\S+\+0000", "2026-12-05T10:12:03+0000", line)
              for line in masked]  # fmt: skip
    masked[0] = re.sub(r"in \S*dead-letter.jsonl", "in dead-letter.jsonl", masked[0])
    masked[-2] = masked[-2].replace("as <id>", "as <new id>")
    assert masked == expected, f"printed:\n{(listed + resent)}"


def run_backlog(block: Block, request: pytest.FixtureRequest) -> None:
    """The three lines against the quick start's web: a job scheduled ten
    minutes ahead is listed, then purged by its name; what they print is
    what the paragraph after them says."""
    need("curl", "curl")
    shell: Shell = request.getfixturevalue("shell")
    request.getfixturevalue("original")
    curl, listing, purging = block.commands()
    job_id = json.loads(shell.run(curl, timeout=20))["id"]
    listed = shell.run(listing, timeout=30).splitlines()
    assert re.fullmatch(r"1 held by web process \d+", listed[0]), listed
    assert re.fullmatch(rf"scheduled  {job_id}  /  at \d+\.?\d*", listed[1]), listed
    purged = shell.run(purging, timeout=30).strip()
    assert purged == "1 cancelled, 0 cancelling, 0 finished before, 0 refused", purged
    answer = call(shell.port(4567), "GET", f"/jobs/{job_id}")[1]
    assert answer["status"] == "cancelled", answer


def run_progress(block: Block, request: pytest.FixtureRequest) -> None:
    """rows.py and its four lines: the job's report seen while it runs, in
    the fields the documented answer has, and its last one kept once done."""
    with _handlers_worker_and_web(block, request, "rows.py") as (shell, lines):
        curl, asking = lines
        job_id = json.loads(shell.run(curl, timeout=20))["id"]
        line = asking.replace("<id>", job_id)
        running = poll_until(lambda: json.loads(shell.run(line, timeout=20)),
                             lambda r: "progress" in r, 20,
                             f"a progress report in GET /jobs/{job_id}")  # fmt: skip
        documented = next(b for b in BLOCKS if b.kind == "output"
                          and '"status": "in_flight"' in b.text)  # fmt: skip
        shown = json.loads(documented.text)
        assert list(running) == list(shown), running
        assert list(running["progress"]) == list(shown["progress"]), running
        assert running["name"] == shown["name"] and running["progress"]["total"] == 10
        assert running["worker"] == shown["worker"].replace(
            "4444", str(shell.port(4444))
        )
        assert running["progress"]["note"] == f"row {running['progress']['done']}"
        done = poll_until(lambda: json.loads(shell.run(line, timeout=20)),
                          lambda r: r.get("status") == "done", 20, "the import done")  # fmt: skip
    assert done["result"] == {"imported": 10}, done
    last = {k: done["progress"][k] for k in ("done", "total", "note")}
    assert last == {"done": 10, "total": 10, "note": "row 10"}, done


RECIPES: dict[str, Callable[[Block, pytest.FixtureRequest], None]] = {
    "original": run_original,
    "curls": run_curls,
    "delays": run_delays,
    "library": run_library,
    "security": run_security,
    "several-webs": run_several_webs,
    "loadtest": run_loadtest,
    "locust": run_locust,
    "completes": run_completes,
    "pull-workers": run_pull_workers,
    "config-error": run_config_error,
    "periodic": run_periodic,
    "routing": run_routing,
    "queues": run_queues,
    "failed-jobs": run_failed_jobs,
    "backlog": run_backlog,
    "progress": run_progress,
}
_ran: set[str] = set()  # recipes that cover several blocks run once
_completed: set[str] = set()  # commands run to their end already


@pytest.mark.parametrize("block", BLOCKS, ids=[b.where for b in BLOCKS])
def test_block(block: Block, request: pytest.FixtureRequest) -> None:
    if block.kind == "":
        pytest.fail(
            f"{block.where}: a code block without a marker; put one of "
            "<!-- docs: run NAME -->, <!-- docs: skip REASON --> or "
            "<!-- docs: output REASON --> on the line above it (see "
            f"tests/docs_harness.py):\n{block.text[:300]}"
        )
    if block.kind in ("skip", "output"):
        assert block.argument, f"{block.where}: say why it is not run"
        pytest.skip(f"{block.where}: {block.kind}: {block.argument}")
    recipe = RECIPES.get(block.argument)
    assert recipe, (
        f"{block.where}: no recipe {block.argument!r}; known: {sorted(RECIPES)}"
    )
    if block.argument in ("library", "periodic"):
        if block.argument in _ran:
            pytest.skip(f"{block.where}: run with the first block of its section")
        _ran.add(block.argument)
    recipe(block, request)


def test_every_doc_is_read_and_every_block_counted() -> None:
    where = {b.path.relative_to(ROOT).as_posix() for b in BLOCKS}
    assert "README.md" in where and "examples/sum/README.md" in where, where
    assert len(BLOCKS) >= 30, len(BLOCKS)


def test_the_readmes_example_commands_are_run_from_the_examples_readmes() -> None:
    """The README's list of examples is skipped as the same commands each
    example's README runs: hold it to that."""
    listed = next(b for b in BLOCKS if b.path.name == "README.md"
                  and b.path.parent == ROOT and "examples.sum" in b.text)  # fmt: skip
    run = {line.split("#", 1)[0].strip() for b in BLOCKS
           if b.kind == "run" and b.path.parent.parent == ROOT / "examples"
           for line in b.commands()}  # fmt: skip
    commands = [line.split("#", 1)[0].strip() for line in listed.commands()]
    assert listed.kind == "skip" and len(commands) == 4, listed
    assert set(commands) <= run, set(commands) - run


def test_an_unmarked_block_is_found_and_a_marker_read(tmp_path: Path) -> None:
    from tests.docs_harness import blocks

    page = tmp_path / "page.md"
    page.write_text("text\n\n    make run\n\n<!-- docs: skip why not -->\n\n"
                    "    make bench\n\n```python\nprint(1)\n```\n")  # fmt: skip
    found = [(b.line, b.kind, b.argument, b.text) for b in blocks(page)]
    assert found == [(3, "", "", "make run"), (7, "skip", "why not", "make bench"),
                     (10, "", "", "print(1)")]  # fmt: skip
