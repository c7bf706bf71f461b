"""Fixtures: real web.py and server.py processes on ports the OS picks."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import PYTHON, ROOT, Proc, Web


@dataclass
class WorkerProc:
    proc: Proc
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def _flags(options: dict[str, Any]) -> list[str]:
    argv = []
    for name, value in options.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    return argv


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
        argv = [
            PYTHON,
            str(ROOT / "server.py"),
            "--port",
            str(port),
            "--handler",
            handler,
        ]
        proc = Proc(
            f"worker{count}",
            argv + _flags(options),
            env={"GREENPIPE_RECORD_DIR": str(record_dir), **(env or {})},
        )
        procs.append(proc)
        match = proc.expect(r"listening on tcp://[^:]+:(\d+)", timeout=15)
        return WorkerProc(proc, int(match[1]))

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
        argv = [
            PYTHON,
            str(ROOT / "web.py"),
            "--port",
            "0",
            "--workers",
            ",".join(addresses),
        ]
        proc = Proc("web", argv + _flags(options), env=env)
        procs.append(proc)
        match = proc.expect(r"serving http://[^:]+:(\d+)", timeout=15)
        web = Web(proc, int(match[1]))
        if wait_barrier:
            proc.expect("barrier met", timeout=15)
        return web

    return start
