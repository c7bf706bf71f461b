"""greenpipe/boot.py: the first statement of greenpipe's own programs.

Its patch_all() must patch exactly what gevent's does (it only shares the
plugin lookups), and leave importlib.metadata as it found it.
"""

from __future__ import annotations

import ast
import json
import subprocess

from tests.support import PYTHON, ROOT

REPORT = (
    "import importlib.metadata as m, json, sys; from gevent import monkey; "
    "print(json.dumps({'patched': sorted(monkey.saved), "
    "'entry_points': m.entry_points.__qualname__, "
    "'threading': monkey.is_module_patched('threading')}))"
)


def _patched_by(first_statement: str) -> dict:
    done = subprocess.run([PYTHON, "-c", f"{first_statement}; {REPORT}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_boot_patches_what_gevents_patch_all_patches():
    plain = _patched_by("from gevent import monkey; monkey.patch_all()")
    ours = _patched_by("from greenpipe import patch_all; patch_all()")
    assert ours["patched"] == plain["patched"] and plain["threading"], (ours, plain)
    assert ours["entry_points"] == plain["entry_points"] == "entry_points", ours


def test_the_programs_greenpipe_ships_start_with_it():
    for program in ("web.py", "server.py", "greenpipe/__main__.py"):
        body = ast.parse((ROOT / program).read_text()).body[1:3]  # after the docstring
        assert [ast.unparse(statement) for statement in body] == [
            "from greenpipe import patch_all",
            "patch_all()",
        ], program


def test_gevents_options_pass_through():
    ours = _patched_by("from greenpipe import patch_all; patch_all(subprocess=False)")
    assert "subprocess" not in ours["patched"] and "socket" in ours["patched"], ours
