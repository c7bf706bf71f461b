"""A new user's first hour (issue 23): names, messages and paths that tell the truth.

Each test here failed before its fix: the console script could not import the
user's module from the current directory, prefixed environment variables were
ignored, misspelt settings were accepted in silence, and argparse errors named
web.py or server.py whatever the program was.
"""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from greenpipe import spelling
from greenpipe.config import load_web, load_worker
from greenpipe.errors import ConfigError
from tests.support import PYTHON, ROOT, Proc

# -- finding 2: one rule for names -------------------------------------------------


def test_the_prefixed_name_works_in_the_environment_too(tmp_path):
    """The key tool and the README said GREENPIPE_CURVE_SECRET=...: it must count."""
    env = {"GREENPIPE_CURVE_SECRET": "web.key_secret",
           "GREENPIPE_CURVE_SERVER": "worker.key", "GREENPIPE_OPS_PORT": "0"}  # fmt: skip
    web = load_web([], env)
    assert (web.curve_secret, web.curve_server, web.ops_port) == (
        "web.key_secret", "worker.key", 0)  # fmt: skip
    worker = load_worker([], {"GREENPIPE_CONCURRENCY": "7", "GREENPIPE_PORT": "4450"})
    assert (worker.concurrency, worker.port) == (7, 4450)


def test_the_prefixed_name_outranks_the_bare_one_and_errors_name_it():
    assert (
        load_web([], {"GREENPIPE_MAX_PENDING": "5", "MAX_PENDING": "9"}).max_pending
        == 5
    )
    with pytest.raises(
        ConfigError,
        match=r"GREENPIPE_MAX_PENDING: .*environment variable GREENPIPE_MAX_PENDING",
    ):
        load_web([], {"GREENPIPE_MAX_PENDING": "many"})


def test_the_key_tool_advises_names_that_work(tmp_path, capsys):
    """Every NAME=value of its advice is a name the web or the worker reads."""
    from dataclasses import fields

    from greenpipe.config import WebSettings, WorkerSettings, env_names
    from greenpipe.curve import keys_main

    assert keys_main([str(tmp_path), "web1"]) == 0
    advice = capsys.readouterr().out
    names = {word.split("=", 1)[0] for word in advice.split() if "=" in word}
    assert {"CURVE_SECRET", "CURVE_SERVER", "CURVE_ALLOW"} <= names, advice
    read = {env for cls in (WebSettings, WorkerSettings) for f in fields(cls)
            for env in env_names(f.name)}  # fmt: skip
    assert names <= read, f"{names - read} in the key tool's advice: \n{advice}"
    web = load_web([], {"CURVE_SECRET": str(tmp_path / "web1.key_secret"),
                        "CURVE_SERVER": "worker.key"})  # fmt: skip
    assert web.curve_secret.endswith("web1.key_secret")


# -- finding 3: settings that would be ignored warn ---------------------------------


@pytest.fixture
def warnings(caplog):
    spelling._warned.clear()
    caplog.set_level(logging.WARNING, logger="greenpipe.config")
    yield caplog
    spelling._warned.clear()


def test_a_misspelt_app_config_key_warns_naming_the_setting_meant(warnings):
    load_web([], {}, {"GREENPIPE_MAX_PENDNG": 5, "GREENPIPE_INLINE": True})
    assert "GREENPIPE_MAX_PENDNG" in warnings.text
    assert "GREENPIPE_MAX_PENDING" in warnings.text
    assert "GREENPIPE_INLINE" not in warnings.text  # the extension's own key


def test_a_worker_setting_in_app_config_says_the_web_ignores_it(warnings):
    load_web([], {}, {"GREENPIPE_CONCURRENCY": 5})
    assert "GREENPIPE_CONCURRENCY" in warnings.text
    assert "worker" in warnings.text


@pytest.mark.parametrize(
    ("variable", "meant", "load"),
    [("JOURNAL", "JOURNAL_DIR", load_web), ("CONCURENCY", "CONCURRENCY", load_worker),
     ("GREENPIPE_MAX_PENDNG", "MAX_PENDING", load_web)],
)  # fmt: skip
def test_a_misspelt_environment_variable_warns(warnings, variable, meant, load):
    load([], {variable: "5"})
    assert f"{variable}" in warnings.text and meant in warnings.text, warnings.text


def test_the_usual_environment_is_not_warned_about(warnings):
    usual = ["HOME", "HOSTNAME", "HOSTTYPE", "PATH", "PWD", "OLDPWD", "SHELL",
             "SHLVL", "TERM", "LANG", "LC_ALL", "USER", "LOGNAME", "MAIL", "TZ",
             "PYTHONPATH", "VIRTUAL_ENV", "DISPLAY", "EDITOR", "PAGER", "TMPDIR",
             "CI",
             "GREENPIPE_HIDE_TOOLS", "GREENPIPE_RECORD_DIR", "GREENPIPE_SLEEP",
             "PS1", "COLUMNS", "LINES", "HISTSIZE", "SSH_AUTH_SOCK", "XDG_RUNTIME_DIR"]  # fmt: skip
    load_web([], dict.fromkeys(usual, "1") | {"PORT": "5000", "port": "4567",
                                              "CONCURRENCY": "5", "CI": "true"})  # fmt: skip
    load_worker([], dict.fromkeys(usual, "1") | {"PORT": "5000", "port": "4444",
                                                 "CONCURRENCY": "5"})  # fmt: skip
    assert not warnings.records, warnings.text


def test_unknown_settings_refuse_refuses(warnings):
    with pytest.raises(
        ConfigError, match="GREENPIPE_MAX_PENDNG.*GREENPIPE_MAX_PENDING"
    ):
        load_web([], {"UNKNOWN_SETTINGS": "refuse"}, {"GREENPIPE_MAX_PENDNG": 5})


# -- finding 3: argparse errors name the real program --------------------------------


def test_argparse_errors_name_the_program_the_user_ran(tmp_path):
    (tmp_path / "myapp.py").write_text(
        "from flask import Flask\nfrom greenpipe import Greenpipe, serve\n"
        "app = Flask(__name__)\nGreenpipe(app)\n"
        "raise SystemExit(serve(app))\n"
    )
    mine = subprocess.run([PYTHON, "myapp.py", "--prot", "1"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=30,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert mine.returncode == 2
    assert mine.stderr.startswith("usage: myapp.py"), mine.stderr
    assert "web.py" not in mine.stderr, mine.stderr
    theirs = subprocess.run([PYTHON, "-m", "greenpipe", "worker", "--prot", "1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=30)  # fmt: skip
    assert theirs.returncode == 2
    assert "greenpipe worker: error: unrecognized arguments: --prot" in theirs.stderr
    assert "server.py" not in theirs.stderr, theirs.stderr


# -- finding 1: the user's module is found from the current directory ----------------


def test_greenpipe_worker_imports_handlers_from_the_current_directory(tmp_path, procs):
    """As the console script pip writes runs it: sys.path[0] is its bin directory."""
    app, bin_dir = tmp_path / "app", tmp_path / "bin"
    app.mkdir(), bin_dir.mkdir()
    (app / "myjobs.py").write_text(
        "from flask import Flask\nfrom greenpipe import Handlers\n"
        "app = Flask(__name__)\nhandlers = Handlers()\n"
        "@handlers.job('hi')\ndef hi(job):\n    return 'hi'\n"
    )
    script = bin_dir / "greenpipe"  # what pip's console-script wrapper says
    script.write_text("import sys\nfrom greenpipe.__main__ import main\n"
                      "sys.exit(main())\n")  # fmt: skip
    worker = Proc("worker", [PYTHON, str(script), "worker", "--port", "0",
                             "--handler", "myjobs:handlers", "--app", "myjobs:app"],
                  env={"PYTHONPATH": str(ROOT)}, cwd=app)  # fmt: skip
    procs.append(worker)
    worker.expect(r"listening on tcp://", timeout=20)


def test_a_worker_whose_registry_runs_nothing_says_so(tmp_path, procs):
    """An empty Handlers() started silently, and no web ever sent it a job
    (the new user's review of routing)."""
    (tmp_path / "emptyjobs.py").write_text("from greenpipe import Handlers\n"
                                           "empty = Handlers()\n")  # fmt: skip
    worker = Proc("worker", [PYTHON, str(ROOT / "server.py"), "--port", "0",
                             "--handler", "emptyjobs:empty"],
                  env={"PYTHONPATH": f"{tmp_path}:{ROOT}"}, cwd=tmp_path)  # fmt: skip
    procs.append(worker)
    worker.expect(r"listening on tcp://", timeout=20)
    worker.expect(r"WARNING .*handler emptyjobs:empty has no job names and no "
                  r"default handler: no web will send it a job", timeout=5)  # fmt: skip


def test_the_greenpipe_command_lists_its_subcommands_and_version():
    shown = subprocess.run([PYTHON, "-m", "greenpipe", "--help"], cwd=ROOT,
                           capture_output=True, text=True, timeout=30)  # fmt: skip
    assert shown.returncode == 0
    for command in ("web", "worker", "keys"):
        assert f"\n  {command} " in shown.stdout, shown.stdout
    version = subprocess.run([PYTHON, "-m", "greenpipe", "--version"], cwd=ROOT,
                             capture_output=True, text=True, timeout=30)  # fmt: skip
    assert version.returncode == 0
    assert version.stdout.strip().startswith("greenpipe "), version.stdout
    assert sys.version_info >= (3, 11)


# -- issue 31, finding 8: forgetting monkey.patch_all() is refused, naming the fix -----


def test_serve_without_gevent_patches_exits_2_naming_the_fix(tmp_path):
    (tmp_path / "myapp.py").write_text(
        "from flask import Flask\nfrom greenpipe import Greenpipe, serve\n"
        "app = Flask(__name__)\nGreenpipe(app)\n"
        "raise SystemExit(serve(app, ['--port', '0']))\n"
    )
    done = subprocess.run([PYTHON, "myapp.py"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=30,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "serve(app) needs gevent's monkey patches" in done.stderr, done.stderr
    assert "monkey.patch_all()" in done.stderr and "serving" not in done.stderr


def test_a_pipe_without_gevent_patches_refuses_to_start_from_a_thread(tmp_path):
    """A threaded server (flask run) would hang every push; the main thread warns."""
    code = (
        "import threading\n"
        "from greenpipe import ConfigError, Pipe\n"
        "def start():\n"
        "    try:\n        Pipe(workers=['127.0.0.1:9'], journal_dir='off').start()\n"
        "    except ConfigError as exc:\n        print(exc)\n"
        "thread = threading.Thread(target=start)\nthread.start()\nthread.join()\n"
        "Pipe(workers=['127.0.0.1:9'], journal_dir='off').start()\n"
    )
    done = subprocess.run([PYTHON, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=30, env={"PYTHONPATH": str(ROOT)})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(
        "a Pipe started from a thread needs gevent's monkey patches"
    ), done.stdout
    assert "a Pipe serving requests needs gevent's monkey patches" in done.stderr


def test_a_bare_handlers_job_decorator_is_refused_naming_the_fix():
    """New-user review: `@handlers.job` without (name), Celery's habit, left the
    registry empty and the function replaced; UnknownJob came only at run time."""
    import pytest

    from greenpipe import Handlers

    handlers = Handlers()
    with pytest.raises(TypeError, match=r"@handlers\.job\('welcome'\)"):

        @handlers.job
        def welcome(job):
            return None
