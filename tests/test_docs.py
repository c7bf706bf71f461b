"""Docs follow the code: every setting is in the README's tables."""

from __future__ import annotations

from dataclasses import fields

import pytest

from greenpipe.config import WebSettings, WorkerSettings, env_names
from greenpipe.scheduler import ScheduleSettings
from tests.docs_harness import Shell
from tests.support import ROOT

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
    lines = (ROOT / "Procfile").read_text().splitlines()
    assert lines[0] == "web: python web.py --port 4567"
    assert lines[1:] == [
        f"worker{i}: python server.py --port {4443 + i}" for i in (1, 2, 3)
    ]


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
