"""Docs follow the code: every setting is in the README's tables."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from greenpipe.config import WebSettings, WorkerSettings, env_names
from greenpipe.scheduler import ScheduleSettings
from tests.docs_harness import Shell
from tests.support import PYTHON, ROOT, Proc, Web, free_port

README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize("cls", [WebSettings, WorkerSettings, ScheduleSettings])
def test_every_setting_is_in_the_readme(cls):
    missing = [
        f.name
        for f in fields(cls)
        if not any(f"`{name}`" in README for name in env_names(f.name))
    ]
    assert not missing, f"README's configuration table lacks {missing}"


def test_procfile_runs_web_and_three_workers_on_the_original_ports():
    """The original setup's ports by default; each one movable from the environment."""
    lines = (ROOT / "Procfile").read_text().splitlines()
    ports = "${WORKER1_PORT:-4444},127.0.0.1:${WORKER2_PORT:-4445},127.0.0.1:${WORKER3_PORT:-4446}"
    assert (
        lines[0]
        == f"web: exec python web.py --port ${{WEB_PORT:-4567}} --workers 127.0.0.1:{ports}"
    )
    assert lines[1:] == [
        f"worker{i}: exec python server.py --port ${{WORKER{i}_PORT:-{4443 + i}}}"
        for i in (1, 2, 3)
    ]


def test_make_runs_procfile_under_honcho_on_moved_ports_and_stops_cleanly(tmp_path):
    """What `make run WEB_PORT=... WORKER1_PORT=...` starts: honcho with the Procfile.

    A job goes through; SIGTERM to honcho stops web and workers, each exit 0.
    """
    ports = {name: free_port() for name in ("WEB_PORT", "WORKER1_PORT",
                                            "WORKER2_PORT", "WORKER3_PORT")}  # fmt: skip
    env = {**{k: str(v) for k, v in ports.items()},
           "PATH": f"{Path(PYTHON).parent}:/usr/bin:/bin",
           "JOURNAL_DIR": str(tmp_path / "journal"),
           "DEAD_LETTER": str(tmp_path / "dead.jsonl")}  # fmt: skip
    honcho = Proc("honcho", [str(Path(PYTHON).parent / "honcho"), "start"], env=env)
    try:
        honcho.expect("barrier met", timeout=30)
        web = Web(honcho, ports["WEB_PORT"])
        status, _, body = web.get("/")
        assert status == 202, body
        honcho.expect(r"worker\d.*handled|worker\d.*job", timeout=10)
    finally:
        honcho.expected_exit = 128 + 15  # honcho's own code after SIGTERM
        code = honcho.stop(timeout=10)
    assert code == 143, f"honcho exited {code}:\n{honcho.tail(30)}"
    for name in ("web.1", "worker1.1", "worker2.1", "worker3.1"):
        honcho.expect(rf"{name} stopped \(rc=0\)", timeout=1)


def test_the_readme_library_example_runs_as_written(tmp_path):
    """The README's "Use it in your Flask app" code, run as a user would copy it."""
    import re
    import subprocess

    from tests.support import PYTHON

    section = README.split("## Use it in your Flask app", 1)[1].split("\n## ", 1)[0]
    app_code, test_code = re.findall(r"```python\n(.*?)```", section, re.S)[:2]
    (tmp_path / "myapp.py").write_text(app_code)
    (tmp_path / "check.py").write_text(
        "from myapp import app, pipe\n" + test_code + "\ntest_signup()\n"
        "print('ok', pipe.settings(app).workers[1])\n"
    )
    done = subprocess.run(
        [PYTHON, "check.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok tcp://127.0.0.1:4445", done.stdout


def test_the_harness_moves_ports_and_leaves_other_numbers(tmp_path):
    """A documented port moves wherever it stands as a port; a count never does."""
    shell = Shell(tmp_path)
    web, worker = shell.port(4567), shell.port(4444)
    line = "port=4444 x --port 5000 --jobs 5000 http://127.0.0.1:4567/ -n 4444"
    assert shell.sub(line) == (
        f"port={worker} x --port {shell.port(5000)} --jobs 5000 "
        f"http://127.0.0.1:{web}/ -n 4444"
    )


def test_every_module_is_in_the_readmes_layout():
    """The Layout section names each module of greenpipe/ (a file split or
    added is a line there), indented under its package."""
    text = (ROOT / "README.md").read_text()
    layout = text[text.index("## Layout") : text.index("## Development")]
    named = {line.split()[0] for line in layout.splitlines() if line.startswith("      ")
             and line.split()[0].endswith((".py", "/"))}  # fmt: skip
    missing = sorted(
        path.relative_to(ROOT / "greenpipe").as_posix()
        for path in (ROOT / "greenpipe").rglob("*.py")
        if path.name not in named
    )
    assert not missing, f"README's Layout does not name: {missing}; add a line each"
