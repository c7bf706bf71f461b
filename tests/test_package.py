"""greenpipe installs as a package and runs without the checkout around it."""

from __future__ import annotations

import http.client
import shutil
import subprocess

import pytest

from tests.support import PYTHON, ROOT, Proc

pytestmark = pytest.mark.timeout(120)


def test_pip_install_gives_a_working_import_and_entry_points(tmp_path, procs):
    target = tmp_path / "site"
    source = tmp_path / "source"  # pip builds in the tree it is given: not ours
    shutil.copytree(ROOT / "greenpipe", source / "greenpipe",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    build = subprocess.run(
        [PYTHON, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=100,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]
    script = (target / "bin" / "greenpipe").read_text()
    assert "greenpipe.__main__" in script, script
    env = {"PYTHONPATH": str(target)}
    elsewhere = tmp_path / "app"
    elsewhere.mkdir()  # no web.py, no greenpipe/ here: only the installed copy
    probe = subprocess.run(
        [PYTHON, "-c", "import greenpipe, greenpipe.testing as t; "
         "print(greenpipe.__file__, t.entry('web'))"],
        cwd=elsewhere, env={**env, "PATH": "/usr/bin:/bin"}, capture_output=True,
        text=True, timeout=30,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.startswith(str(target)), probe.stdout
    assert "'-m', 'greenpipe', 'web'" in probe.stdout, probe.stdout

    worker = Proc("worker", [PYTHON, "-m", "greenpipe", "worker", "--port", "0"],
                  env=env, cwd=elsewhere)  # fmt: skip
    procs.append(worker)
    port = worker.expect(r"listening on tcp://[^:]+:(\d+)")[1]
    web = Proc("web", [PYTHON, "-m", "greenpipe", "web", "--port", "0", "--workers",
               f"127.0.0.1:{port}", "--dead-letter", str(tmp_path / "dl.jsonl")],
               env=env, cwd=elsewhere)  # fmt: skip
    procs.append(web)
    web.expect("barrier met")
    http_port = web.expect(r"serving http://[^:]+:(\d+)")[1]

    conn = http.client.HTTPConnection("127.0.0.1", int(http_port), timeout=10)
    conn.request("GET", "/")
    first = conn.getresponse()
    assert (first.status, bool(first.read())) == (202, True)
    conn.request("GET", "/dashboard/static/uPlot.iife.min.js")  # package data
    asset = conn.getresponse()
    assert (asset.status, asset.read()[:29]) == (200, b"/*! https://github.com/leeoni")
    conn.close()
    worker.expect(r"job \S+ attempt 1: GET /")


def test_greenpipe_without_a_command_says_what_it_takes():
    done = subprocess.run([PYTHON, "-m", "greenpipe", "serve"], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.returncode == 2
    assert "expected 'web', 'worker', 'schedule', 'jobs' or 'keys', got 'serve'" in (
        done.stderr
    )
