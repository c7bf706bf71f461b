"""Fixtures: real web.py and server.py processes on ports the OS picks."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from greenpipe import testing
from tests import leftovers
from tests.support import PYTHON, Proc, Web, flags, path_without


def pytest_configure(config: pytest.Config) -> None:
    """GREENPIPE_HIDE_TOOLS=wrk,iptables,...: run as on a machine without them.

    `make test-without-tools` (and CI) use it to prove that every test needing
    an optional system tool skips with a reason or falls back, never fails.
    """
    hidden = [t for t in os.environ.get("GREENPIPE_HIDE_TOOLS", "").split(",") if t]
    if hidden:
        folder = tempfile.mkdtemp(prefix="greenpipe-path-")
        os.environ["PATH"] = path_without(hidden, Path(folder) / "bin")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """The fast tier (``-m "inprocess ..."``) skips importing a test module
    that has no in-process test: it cannot say the word. Importing the 34
    modules with none cost each pytest-xdist worker 3 s of its 30."""
    expression = config.option.markexpr or ""
    if not (expression == "inprocess" or expression.startswith("inprocess and ")):
        return None
    if collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    return "inprocess" not in collection_path.read_text(encoding="utf-8")


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind() -> Iterator[None]:
    """The suite fails if a test left a process running (tests/leftovers.py)."""
    leftovers.adopt_orphans()
    yield
    names = leftovers.end_leftovers()
    assert not names, "processes the tests left running (now ended):\n" + "\n".join(
        names
    )


@dataclass
class WorkerProc:
    proc: Proc
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Every process a test starts; stopped with SIGTERM afterwards, exit code checked."""
    started: list[Proc] = []
    yield started
    problems = []
    for proc in reversed(started):
        try:
            code = proc.stop(timeout=6)
        except AssertionError as exc:
            problems.append(str(exc))
            continue
        if proc.expected_exit is not None and code != proc.expected_exit:
            problems.append(
                f"{proc.name} exited {code}, not {proc.expected_exit}:\n{proc.tail()}"
            )
    assert not problems, "\n\n".join(problems)


@pytest.fixture
def record_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "records"
    directory.mkdir()
    return directory


@pytest.fixture
def start_worker(procs: list[Proc], record_dir: Path):
    """Start server.py (port 0 unless given); returns once it logged its endpoint."""
    count = 0

    def start(
        port: int = 0,
        handler: str = "tests.handlers:record",
        env: dict[str, str] | None = None,
        **options: Any,
    ) -> WorkerProc:
        nonlocal count
        count += 1
        proc, real_port = testing.start_worker(
            f"worker{count}",
            port,
            {"GREENPIPE_RECORD_DIR": str(record_dir), **(env or {})},
            handler=handler,
            **options,
        )
        procs.append(proc)
        return WorkerProc(proc, real_port)

    return start


@pytest.fixture
def start_web(procs: list[Proc], tmp_path: Path):
    """Start web.py (port 0) for the given workers; by default waits for the barrier."""

    def start(
        workers: list[WorkerProc | str],
        wait_barrier: bool = True,
        env: dict[str, str] | None = None,
        **options: Any,
    ) -> Web:
        addresses = [w.address if isinstance(w, WorkerProc) else w for w in workers]
        options.setdefault("dead_letter", tmp_path / "dead-letter.jsonl")
        options.setdefault("journal_dir", tmp_path / "journal")
        web = testing.start_web(
            addresses, env=env, wait_barrier=wait_barrier, **options
        )
        procs.append(web.proc)
        return web

    return start


@pytest.fixture
def start_gunicorn(procs: list[Proc], tmp_path: Path):
    """gunicorn -w 2 serving web:app (greenpipe.gunicorn) for the given workers;
    returns (its Proc, the port it listens on). `env` adds or overrides settings."""

    def start(workers: list[WorkerProc], **env: str) -> tuple[Proc, int]:
        env = {"WORKERS": ",".join(w.address for w in workers),
               "JOURNAL_DIR": str(tmp_path / "journal"),
               "DEAD_LETTER": str(tmp_path / "dead.jsonl"), **env}  # fmt: skip
        proc = Proc("gunicorn", [PYTHON, "-m", "gunicorn", "-c", "python:greenpipe.gunicorn",
                                 "-w", "2", "-b", "127.0.0.1:0", "web:app"], env=env)  # fmt: skip
        procs.append(proc)
        return proc, int(proc.expect(r"Listening at: http://127\.0\.0\.1:(\d+)", 20)[1])

    return start


@pytest.fixture
def start_app(procs: list[Proc], tmp_path: Path, record_dir: Path):
    """tests/retry_handlers.py's app (serve(app)) for the given workers."""

    def start(workers: list[WorkerProc], **options: Any) -> Web:
        options.setdefault("dead_letter", tmp_path / "dead-letter.jsonl")
        options.setdefault("journal_dir", tmp_path / "journal")
        argv = [PYTHON, "-m", "tests.retry_handlers", "--port", "0", "--workers",
                ",".join(w.address for w in workers), *flags(options)]  # fmt: skip
        proc = Proc("app", argv, env={"GREENPIPE_RECORD_DIR": str(record_dir)})
        procs.append(proc)
        port = int(proc.expect(r"serving http://[^:]+:(\d+)", 15)[1])
        proc.expect("barrier met", 15)
        return Web(proc, port)

    return start
