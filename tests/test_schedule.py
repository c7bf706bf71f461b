"""Periodic jobs (issue 20, part): ticks and declarations.

Ticks and declarations in microseconds (`greenpipe.periodic`, `Handlers`).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from itertools import islice
from zoneinfo import ZoneInfo

import pytest

from greenpipe import Handlers
from greenpipe.handling import Policy
from greenpipe.periodic import Periodic, tick_text

BERLIN = ZoneInfo("Europe/Berlin")


def _at(*parts: int, tz=UTC) -> float:
    return datetime(*parts, tzinfo=tz).timestamp()


def _utc(tick: float) -> str:
    return tick_text(tick)


# -- ticks ------------------------------------------------------------------------


def test_every_ticks_on_multiples_of_every_since_the_epoch():
    every = Periodic.declare("poll", every=5)
    assert every.next_after(1003.2) == 1005.0
    assert every.next_after(1005.0) == 1010.0, "strictly after"
    assert list(islice(every.back_from(1012.5), 3)) == [1010.0, 1005.0, 1000.0]
    hourly = Periodic.declare("hourly", every=3600)
    restart = _at(2026, 11, 23, 10, 17, 42)
    assert _utc(hourly.next_after(restart)) == "2026-11-23T11:00:00Z", "the same grid"
    half = Periodic.declare("half", every=0.5)
    assert half.next_after(1000.2) == 1000.5
    assert half.key(1000.5) == "half@1970-01-01T00:16:40.500000Z"


def test_cron_ticks_in_a_zone_across_both_changes_of_summer_time():
    nightly = Periodic.declare("nightly", "30 2 * * *", tz="Europe/Berlin")
    # 2026-03-29: 02:00 CET -> 03:00 CEST. 02:30 does not exist: just after.
    spring = nightly.next_after(_at(2026, 3, 28, 12, tz=BERLIN))
    assert _utc(spring) == "2026-03-29T01:00:00Z"  # 03:00 CEST
    assert _utc(nightly.next_after(spring)) == "2026-03-30T00:30:00Z"  # 02:30 CEST
    # 2026-10-25: 03:00 CEST -> 02:00 CET. 02:30 happens twice: once, the first.
    fall = nightly.next_after(_at(2026, 10, 24, 12, tz=BERLIN))
    assert _utc(fall) == "2026-10-25T00:30:00Z"  # 02:30 CEST
    assert _utc(nightly.next_after(fall)) == "2026-10-26T01:30:00Z"  # 02:30 CET
    back = nightly.back_from(_at(2026, 10, 26, 12, tz=BERLIN))
    assert [_utc(t) for t in islice(back, 3)] == [
        "2026-10-26T01:30:00Z", "2026-10-25T00:30:00Z", "2026-10-24T00:30:00Z"
    ], "back from a day later: the repeated 02:30 once"  # fmt: skip
    # A job of every hour runs each real hour, both 02:00s.
    hourly = Periodic.declare("hourly", "0 * * * *", tz="Europe/Berlin")
    ticks, moment = [], _at(2026, 10, 25, 1, 30, tz=BERLIN)
    for _ in range(3):
        moment = hourly.next_after(moment)
        ticks.append(_utc(moment))
    assert ticks == ["2026-10-25T00:00:00Z", "2026-10-25T01:00:00Z",
                     "2026-10-25T02:00:00Z"]  # fmt: skip
    tokyo = Periodic.declare("morning", "0 9 * * *", tz="Asia/Tokyo")
    assert _utc(tokyo.next_after(_at(2025, 12, 31, 12))) == "2026-01-01T00:00:00Z"
    assert tokyo.key(_at(2026, 1, 1)) == "morning@2026-01-01T00:00:00Z"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cron": "*/5 * * *"}, r"cron='\*/5 \* \* \*': expected a cron expression of 5 fields"),
        ({"cron": "61 * * * *"}, r"cron='61 \* \* \* \*': .*out of range"),
        ({"cron": "* * * * * *"}, r"5 fields .*\(6 fields\)"),
        ({}, r"give a cron expression .* or every=seconds, one of them; got neither"),
        ({"cron": "* * * * *", "every": 60}, r"got both"),
        ({"every": 0}, r"every=0: expected a number of seconds > 0"),
        ({"every": -5}, r"every=-5: expected a number of seconds > 0"),
        ({"every": "60"}, r"every='60': expected a number of seconds > 0"),
        ({"cron": "* * * * *", "tz": "Europe/Pariss"}, r"tz='Europe/Pariss': expected an IANA time zone name"),
        ({"every": 60, "tz": "Europe/Paris"}, r"tz='Europe/Paris' with every=: .*give a cron expression"),
        ({"every": 60, "missed": "some"}, r"missed='some': expected one of 'skip' .*'latest' or 'all'"),
        ({"every": 60, "json": {1, 2}}, r"json=\{1, 2\}: not JSON-serialisable"),
    ],
)  # fmt: skip
def test_a_bad_declaration_names_the_value_and_what_is_expected(kwargs, message):
    handlers = Handlers()
    with pytest.raises(ValueError, match=message):
        handlers.periodic(**kwargs)
    with pytest.raises(ValueError, match=message):
        handlers.schedule("job", **kwargs)
    assert handlers.schedules == [] and handlers.names == []


def test_a_periodic_job_is_registered_as_job_registers_it():
    handlers = Handlers()

    @handlers.periodic(every=60, retries=2, timeout=5)
    def poll(job):
        return "polled"

    @handlers.periodic("0 3 * * *", name="report", json={"kind": "daily"},
                       tz="Europe/Paris", missed="latest")  # fmt: skip
    def nightly(job):
        return None

    handlers.schedule("/cleanup", every=900)  # its handler lives elsewhere
    assert handlers.names == ["poll", "report"] and "/cleanup" not in handlers
    assert handlers.policy("poll") == Policy(retries=2, timeout=5)
    assert [(p.name, p.describe(), p.json, p.missed) for p in handlers.schedules] == [
        ("poll", "every 60 s", None, "skip"),
        ("report", "cron '0 3 * * *' Europe/Paris", {"kind": "daily"}, "latest"),
        ("/cleanup", "every 900 s", None, "skip"),
    ]
    with pytest.raises(ValueError, match="already has a schedule .*one schedule per"):
        handlers.schedule("poll", every=5)
    with pytest.raises(ValueError, match="retries=-1"):
        handlers.periodic(every=5, retries=-1)  # at declaration, not when decorating
    with pytest.raises(TypeError, match="retrys"):
        handlers.periodic(every=5, retrys=1)
    with pytest.raises(ValueError, match="printable ASCII"):
        handlers.schedule("café", every=5)


def test_cron_without_croniter_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "croniter", None)  # as if not installed
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'greenpipe\[cron\]'"):
        Handlers().schedule("report", "0 3 * * *")
    assert Handlers().schedule("poll", every=60).every == 60, "every= needs nothing"
