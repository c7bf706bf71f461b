"""Docs follow the code: every setting is in the README's tables."""

from __future__ import annotations

from dataclasses import fields

import pytest

from greenpipe.config import WebSettings, WorkerSettings, env_names
from tests.support import ROOT

README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize("cls", [WebSettings, WorkerSettings])
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
