"""Settings: defaults < environment < flags, and errors that say what to do."""

from __future__ import annotations

import subprocess

import pytest

from greenpipe.config import (
    DEFAULT_WORKERS,
    Endpoint,
    WebSettings,
    WorkerSettings,
    load_web,
    load_worker,
    parse_endpoint,
)
from greenpipe.errors import ConfigError
from tests.support import PYTHON, ROOT


def test_defaults_run_on_one_machine_with_no_settings():
    web = load_web([], {})
    assert (web.host, web.port, web.max_body) == ("127.0.0.1", 4567, 1 << 20)
    assert web.workers == DEFAULT_WORKERS
    assert [w.address for w in web.workers] == [
        "tcp://127.0.0.1:4444",
        "tcp://127.0.0.1:4445",
        "tcp://127.0.0.1:4446",
    ]
    worker = load_worker([], {})
    assert (worker.host, worker.port, worker.concurrency) == ("127.0.0.1", 4444, 100)


def test_lower_case_port_outranks_PORT_which_honcho_sets():
    assert load_worker([], {"PORT": "5100"}).port == 5100
    assert load_worker([], {"PORT": "5100", "port": "4445"}).port == 4445
    assert (
        load_worker(["--port", "4446"], {"PORT": "5100", "port": "4445"}).port == 4446
    )


def test_flags_outrank_environment_which_outranks_defaults():
    env = {"MAX_PENDING": "50", "DRAIN_TIMEOUT": "2.5", "MAX_BODY": "64KiB"}
    web = load_web(["--max-pending", "7"], env)
    assert (web.max_pending, web.drain_timeout, web.max_body) == (7, 2.5, 64 * 1024)
    assert load_web([], {}).max_pending == WebSettings().max_pending


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:4444", Endpoint("tcp://127.0.0.1:4444")),
        ("tcp://10.0.0.2:80", Endpoint("tcp://10.0.0.2:80")),
        ("worker-a.local:5000", Endpoint("tcp://worker-a.local:5000")),
        ("ipc:///tmp/w1", Endpoint("ipc:///tmp/w1")),
        ("push+tcp://127.0.0.1:5557", Endpoint("tcp://127.0.0.1:5557", reliable=False)),
        ("push+127.0.0.1:5557", Endpoint("tcp://127.0.0.1:5557", reliable=False)),
    ],
)
def test_worker_endpoints(text, expected):
    assert parse_endpoint(text) == expected


@pytest.mark.parametrize(
    ("env", "needles"),
    [
        (
            {"port": "abc"},
            ["port: expected an integer port 0-65535", "'abc'", "variable port"],
        ),
        (
            {"PORT": "70000"},
            ["PORT: expected an integer port", "'70000'", "variable PORT"],
        ),
        ({"MAX_BODY": "lots"}, ["MAX_BODY: expected a size", "'lots'", "default 1MiB"]),
        (
            {"WORKERS": "127.0.0.1"},
            ["WORKERS: expected a comma-separated", "'127.0.0.1'"],
        ),
        ({"WORKERS": "a:1,a:1"}, ["tcp://a:1 is listed twice"]),
        ({"WORKERS": " , "}, ["at least one worker"]),
        (
            {"READY_TIMEOUT": "-1"},
            ["READY_TIMEOUT: expected a number of seconds", "'-1'"],
        ),
        ({"ACCESS_LOG": "maybe"}, ["ACCESS_LOG: expected a yes/no value"]),
        ({"LOG_LEVEL": "loud"}, ["LOG_LEVEL: expected one of DEBUG"]),
        ({"HEARTBEAT": "2", "HEARTBEAT_TIMEOUT": "3"}, ["at least twice HEARTBEAT"]),
        ({"MAX_DELIVERIES": "300"}, ["MAX_DELIVERIES: expected at most 255"]),
        ({"MAX_ATTEMPTS": "300"}, ["MAX_DELIVERIES: expected at most 255"]),
        ({"MAX_ATTEMPTS": "x"}, ["MAX_ATTEMPTS: expected a whole number"]),
    ],
)
def test_bad_web_settings_name_setting_value_and_source(env, needles):
    with pytest.raises(ConfigError) as caught:
        load_web([], env)
    for needle in needles:
        assert needle in str(caught.value)


def test_max_attempts_is_the_old_name_of_max_deliveries_and_warns_once(caplog):
    from greenpipe import config

    config._warned_aliases.clear()
    with caplog.at_level("WARNING", logger="greenpipe.config"):
        assert load_web([], {"MAX_ATTEMPTS": "2"}).max_deliveries == 2
        assert load_web(["--max-attempts", "4"], {}).max_deliveries == 4
        app_config = {"GREENPIPE_MAX_ATTEMPTS": 5}
        assert load_web([], {}, app_config).max_attempts == 5  # the old attribute
    warned = [r.getMessage() for r in caplog.records if "deprecated" in r.message]
    assert len(warned) == 1, warned
    assert "MAX_ATTEMPTS is deprecated: it is MAX_DELIVERIES now" in warned[0]
    assert not [r for r in caplog.records if "not a setting" in r.getMessage()]
    both = {"MAX_ATTEMPTS": "2", "MAX_DELIVERIES": "6"}
    assert load_web([], both).max_deliveries == 6, "the new name wins at a level"
    assert load_web(["--max-attempts", "7"], both).max_deliveries == 7, "flags win"
    assert load_web(["--max-deliveries", "8"], {}).max_deliveries == 8


def test_bad_flag_names_the_flag():
    with pytest.raises(
        ConfigError, match=r"CONCURRENCY: .* got '0' \(flag --concurrency\)"
    ):
        load_worker(["--concurrency", "0"], {})
    with pytest.raises(
        ConfigError, match="HANDLER: expected a handler as package.module:callable"
    ):
        load_worker(["--handler", "not a handler"], {})


def test_worker_settings_are_frozen():
    with pytest.raises(AttributeError):
        WorkerSettings().port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("script", "env", "needle"),
    [
        ("web.py", {"MAX_PENDING": "many"}, "MAX_PENDING: expected a whole number"),
        (
            "server.py",
            {"port": "x"},
            "port: expected an integer port 0-65535 (0: the OS picks one), got 'x'",
        ),
        (
            "server.py",
            {"HANDLER": "nosuch.module:run"},
            "cannot import module 'nosuch.module'",
        ),
    ],
)
def test_entry_points_exit_2_or_1_with_the_message(script, env, needle):
    result = subprocess.run(
        [PYTHON, str(ROOT / script)],
        env={"PATH": "/usr/bin:/bin", **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert needle in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert result.returncode == 2


def test_taken_port_exits_1_naming_the_port(start_worker):
    taken = start_worker()
    result = subprocess.run(
        [PYTHON, str(ROOT / "server.py"), "--port", str(taken.port)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1, result.stderr
    assert f"cannot bind tcp://127.0.0.1:{taken.port}" in result.stderr
    assert "Traceback" not in result.stderr
