"""The docs harness: every code block of the README and the docs, run as a user would.

Each block carries an HTML comment just above it (invisible once rendered):

    <!-- docs: run NAME -->       run by the recipe NAME in tests/test_readme.py
    <!-- docs: skip REASON -->    not run here; the harness prints the reason
    <!-- docs: output REASON -->  what a command prints, not a command

A block without one fails the harness: none is skipped in silence. Commands
run in a temporary directory laid out like a checkout (web.py, server.py,
loadtest/, examples/ and a .venv/bin whose programs are the suite's), with
the documented ports (4567, 4444-4446, 5000, ...) replaced by free ones.

Why not a Markdown plugin (pytest-codeblocks, pytest-markdown-docs, sybil,
phmdoctest): they run each block alone to completion, as Python or one shell
script. The README's blocks are terminals that keep running (a worker, a
web), used by the next block, on ports that must be moved; that takes the
few recipes here rather than a generic runner.
"""

from __future__ import annotations

import re
import shlex
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from greenpipe.testing import PYTHON, ROOT, Proc, free_port

DOCUMENTED_PORTS = (4567, 4444, 4445, 4446, 5000, 5557, 5558, 8089)
# Where a number in a documented command is a port: after host:, port=/PORT=, --port.
_PORT_PLACE = r"(?:(?<=:)|(?<=port=)|(?<=PORT=)|(?<=--port ))"
_MARKER = re.compile(r"^<!-- docs: (run|skip|output)\b\s*(.*?)\s*-->$")
DOCS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "examples").glob("*/README.md")),
]


@dataclass(frozen=True)
class Block:
    """One code block: where it is, its text, and its marker (kind, argument)."""

    path: Path
    line: int  # 1-based line of the block's first line
    text: str
    kind: str  # "run", "skip", "output", or "" when unmarked
    argument: str  # the recipe's name, or the reason

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    def commands(self) -> list[str]:
        """Shell lines: continuations joined, blank and comment-only lines left out."""
        joined = re.sub(r"\\\n\s*", "", self.text)
        return [line for line in joined.splitlines()
                if line.strip() and not line.lstrip().startswith("#")]  # fmt: skip


def _marker(lines: list[str], start: int) -> tuple[str, str]:
    above = start - 1
    while above >= 0 and not lines[above].strip():
        above -= 1
    if above >= 0 and lines[above].startswith("```"):
        return "", ""
    match = _MARKER.match(lines[above].strip()) if above >= 0 else None
    return (match[1], match[2]) if match else ("", "")


def blocks(path: Path) -> list[Block]:
    """The fenced and indented code blocks of a Markdown file, in order."""
    lines = path.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        line = lines[i]
        previous = lines[i - 1] if i else ""
        if line.startswith("```"):
            end = i + 1
            while not lines[end].startswith("```"):
                end += 1
            body = "\n".join(lines[i + 1 : end])
            found.append(Block(path, i + 2, body, *_marker(lines, i)))
            i = end + 1
            continue
        if line.startswith("    ") and not previous.strip() and not _in_list(lines, i):
            end = i
            while end < len(lines) and (lines[end].startswith("    ")
                                        or not lines[end].strip()):  # fmt: skip
                end += 1
            while not lines[end - 1].strip():
                end -= 1
            body = "\n".join(text[4:] for text in lines[i:end])
            found.append(Block(path, i + 1, body, *_marker(lines, i)))
            i = end
            continue
        i += 1
    return found


def _in_list(lines: list[str], i: int) -> bool:
    """An indented paragraph of a list item is text, not code."""
    j = i - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    return j >= 0 and bool(re.match(r"^\s*([-*]|\d+\.)\s", lines[j]))


def all_blocks() -> list[Block]:
    return [block for path in DOCS for block in blocks(path)]


class Shell:
    """A user's shell in a checkout-like directory, with the documented ports moved."""

    def __init__(self, tmp: Path) -> None:
        self.cwd = tmp
        self.ports = {port: free_port() for port in DOCUMENTED_PORTS}
        for name in ("web.py", "server.py", "loadtest", "examples", "greenpipe",
                     "pyproject.toml", "Procfile"):  # fmt: skip
            (tmp / name).symlink_to(ROOT / name)
        shims = tmp / ".venv" / "bin"
        shims.mkdir(parents=True)
        bin_dir = Path(PYTHON).parent
        for name in ("python", "locust", "gunicorn", "honcho"):
            self._shim(shims / name, f'exec {shlex.quote(str(bin_dir / name))} "$@"')
        # The real entry point: `make` installs it (pip install -e .); a
        # checkout where it does not gets the README's commands failing here.
        self._shim(shims / "greenpipe",
                   f'exec {shlex.quote(str(bin_dir / "greenpipe"))} "$@"')  # fmt: skip
        self.env = {
            "PATH": f"{shims}:/usr/bin:/bin",
            "PYTHONPATH": str(ROOT),
            "HOME": str(tmp),
            "LOCUST_WEB_PORT": str(self.ports[8089]),
        }

    @staticmethod
    def _shim(path: Path, line: str) -> None:
        path.write_text(f"#!/bin/sh\n{line}\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)

    def port(self, documented: int) -> int:
        return self.ports[documented]

    def sub(self, text: str) -> str:
        """The documented ports replaced by this shell's free ones.

        Only where a number stands as a port (after `host:`, `port=`, `PORT=`
        or `--port `): `--jobs 5000` is a count and stays 5000.
        """
        for documented, free in self.ports.items():
            text = re.sub(rf"{_PORT_PLACE}{documented}(?!\d)", str(free), text)
        return text

    def run(self, line: str, timeout: float = 60.0, code: int = 0) -> str:
        """Run one documented line to its end; its output (stdout and stderr)."""
        command = self.sub(line)
        done = subprocess.run(["bash", "-c", command], cwd=self.cwd, env=self.env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=timeout)  # fmt: skip
        assert done.returncode == code, (
            f"`{command}` (documented as `{line}`) exited {done.returncode}, not "
            f"{code}:\n{done.stdout[-3000:]}"
        )
        return done.stdout

    def start(
        self, line: str, name: str, defaults: dict[str, str] | None = None
    ) -> Proc:
        """Start a documented long-running line (a terminal that stays open).

        `defaults`: environment for what the line leaves to defaults that sit
        on a documented port (web.py's 4567 and workers 4444-4446).
        """
        env = {**self.env, **(defaults or {})}
        return Proc(name, ["bash", "-c", exec_form(self.sub(line))], env=env,
                    cwd=self.cwd)  # fmt: skip

    def web_defaults(self) -> dict[str, str]:
        """Where web.py's defaults would be, moved: its port and its workers."""
        workers = ",".join(f"127.0.0.1:{self.ports[p]}" for p in (4444, 4445, 4446))
        return {"port": str(self.ports[4567]), "WORKERS": workers}


def exec_form(command: str) -> str:
    """`a=1 b=2 cmd ...` as `a=1 b=2 exec cmd ...`: signals reach the program."""
    words = command.split(" ")
    n = 0
    while n < len(words) and "=" in words[n] and words[n].split("=")[0].isidentifier():
        n += 1
    return " ".join([*words[:n], "exec", *words[n:]])
