"""Periodic jobs (issue 20, part): ticks, missed ticks, the one scheduler.

Ticks and declarations in microseconds (`greenpipe.periodic`); the
scheduler's decisions on an injected clock with a fake push (a real state
file); then real processes: a worker (tests/periodic_handlers.py, a job every
second) and ``greenpipe schedule``, counted, killed with SIGKILL, doubled.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from itertools import islice
from zoneinfo import ZoneInfo

import pytest

from greenpipe import Handlers
from greenpipe.errors import ConfigError, Unavailable
from greenpipe.handling import Policy
from greenpipe.periodic import MAX_CATCH_UP, ON_TIME_S, Periodic, tick_text
from greenpipe.scheduler import (
    STATE_FILE,
    Scheduler,
    State,
    load_schedule,
    load_schedules,
)
from greenpipe.testing import (
    PYTHON,
    ROOT,
    Proc,
    poll_until,
    read_records,
    start_scheduler,
)

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
        ({"cron": "* * * * *", "tz": UTC}, r"tz=datetime.timezone.utc: expected an IANA time zone name \(a str\)"),
        ({"cron": 10}, r"cron=10: expected a cron expression \(a str\); for every 10 s, write every=10"),
        ({"cron": print}, r"write @handlers.periodic\(...\) with its parentheses"),
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


# -- the scheduler's decisions, on an injected clock -------------------------------


class Fake:
    """A clock the test moves, and a push that records (or refuses)."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.pushed: list[tuple[str, str]] = []
        self.refuse = False
        self.known: dict[str, str] = {}  # key -> job id, as the journal keeps them

    def push(self, periodic: Periodic, tick: float) -> tuple[str, bool]:
        if self.refuse:
            raise Unavailable("no worker can take jobs now")
        key = periodic.key(tick)
        if key in self.known:
            return self.known[key], False
        self.pushed.append((periodic.name, _utc(tick)))
        self.known[key] = f"job-{len(self.known) + 1}"
        return self.known[key], True


def _scheduler(tmp_path, fake: Fake, *schedules: Periodic, ttl: float = 3600.0):
    state = State(str(tmp_path))
    state.load()
    scheduler = Scheduler(schedules, state, fake.push, ttl, clock=lambda: fake.now)
    scheduler.begin()
    return scheduler


T0 = _at(2026, 11, 23, 12, 0, 0)


def test_a_new_job_owes_nothing_before_its_start_then_each_tick_once(tmp_path):
    fake = Fake(T0 + 0.4)
    scheduler = _scheduler(tmp_path, fake, Periodic.declare("poll", every=10))
    assert scheduler.run_due() == T0 + 10, "nothing due: wake at the next tick"
    assert fake.pushed == []
    for step in (10.001, 10.5, 20.2):
        fake.now = T0 + step
        scheduler.run_due()
    assert fake.pushed == [("poll", "2026-11-23T12:00:10Z"),
                           ("poll", "2026-11-23T12:00:20Z")]  # fmt: skip
    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert state["jobs"]["poll"] == {"last": T0 + 20, "pushing": None,
                                     "tick": "2026-11-23T12:00:20Z"}  # fmt: skip


def _hms(start: str, count: int, step: int = 10) -> list[str]:
    """`count` times of day from `start` (HH:MM:SS), `step` seconds apart."""
    first = datetime.strptime(start, "%H:%M:%S")
    return [datetime.fromtimestamp(first.timestamp() + i * step).strftime("%H:%M:%S")
            for i in range(count)]  # fmt: skip


@pytest.mark.parametrize(
    ("missed", "down_s", "pushed", "skipped"),
    [
        # every 10 s; 12:00:10 pushed, then down: ticks 12:00:20 ... 12:01:50 due
        ("skip", 100, ["12:01:50"], 9),  # the newest, 0.5 s late, is on time
        ("latest", 100, ["12:01:40", "12:01:50"], 8),
        ("all", 100, _hms("12:00:20", 10), 0),
        # 12:00:20 ... 12:33:30: 200 due, the newest MAX_CATCH_UP missed pushed
        ("all", 2000, _hms("12:16:50", MAX_CATCH_UP + 1), 200 - MAX_CATCH_UP - 1),
    ],
)
def test_missed_ticks_after_downtime_follow_the_jobs_choice(
    tmp_path, caplog, missed, down_s, pushed, skipped
):
    fake = Fake(T0 + 5)
    every = Periodic.declare("poll", every=10, missed=missed)
    scheduler = _scheduler(tmp_path, fake, every)
    fake.now = T0 + 10
    scheduler.run_due()  # 12:00:10
    fake.now = T0 + 10 + down_s + 0.5
    again = _scheduler(tmp_path, fake, every)  # a restart: the state file read back
    with caplog.at_level(logging.WARNING, "greenpipe.scheduler"):
        again.run_due()
    assert [tick[-9:-1] for _, tick in fake.pushed[1:]] == pushed
    warned = [r.getMessage() for r in caplog.records]
    if skipped:
        assert any(f"skipped {skipped} missed ticks" in w for w in warned), warned
    else:
        assert not warned, warned
    assert again.skipped == skipped


def test_a_tick_is_on_time_up_to_a_minute_late_then_missed(tmp_path, caplog):
    hourly = Periodic.declare("report", every=3600)
    for late, pushed in (
        (ON_TIME_S - 1, ["2026-11-23T12:00:00Z"]),
        (ON_TIME_S + 1, []),
    ):
        fake = Fake(T0 - 10)
        (tmp_path / str(late)).mkdir()
        scheduler = _scheduler(tmp_path / str(late), fake, hourly)
        fake.now = T0 + late  # the scheduler stalled (or restarted) meanwhile
        with caplog.at_level(logging.WARNING, "greenpipe.scheduler"):
            scheduler.run_due()
        assert [tick for _, tick in fake.pushed] == pushed, late
    assert "report: skipped 1 missed tick (2026-11-23T12:00:00Z" in caplog.text


def test_a_tick_in_doubt_is_pushed_again_with_its_key_only_within_the_ttl(
    tmp_path, caplog
):
    fake = Fake(T0 + 30)
    every = Periodic.declare("poll", every=60, missed="all")
    scheduler = _scheduler(tmp_path, fake, every)
    fake.now = T0 + 60
    scheduler.run_due()  # 12:01:00 pushed, its key known
    state = json.loads((tmp_path / STATE_FILE).read_text())
    state["jobs"]["poll"].update(last=T0, pushing=T0 + 60)  # killed before the write
    (tmp_path / STATE_FILE).write_text(json.dumps(state))
    fake.now = T0 + 62
    again = _scheduler(tmp_path, fake, every)
    again.run_due()
    assert (again.pushed, again.again) == (0, 1), "the same job: its key answered"
    assert fake.pushed == [("poll", "2026-11-23T12:01:00Z")]
    (tmp_path / STATE_FILE).write_text(json.dumps(state))
    fake.now = T0 + 60 + 3630  # down over IDEMPOTENCY_TTL: its key may be gone
    fake.known.clear()
    late = _scheduler(tmp_path, fake, every, ttl=3600.0)
    with caplog.at_level(logging.WARNING, "greenpipe.scheduler"):
        late.run_due()
    assert fake.pushed.count(("poll", "2026-11-23T12:01:00Z")) == 1, "never twice"
    assert late.pushed == 60, "12:02 ... 13:01, the missed ones all caught up"
    assert "12:01:00Z was being pushed when the scheduler stopped" in caplog.text


def test_a_refused_push_is_tried_again_and_stays_on_time(tmp_path):
    fake = Fake(T0 + 1)
    scheduler = _scheduler(tmp_path, fake, Periodic.declare("poll", every=60))
    fake.now, fake.refuse = T0 + 60.01, True
    assert scheduler.run_due() == pytest.approx(T0 + 61.01), "again in a second"
    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert state["jobs"]["poll"]["pushing"] == T0 + 60, "in doubt while refused"
    fake.now, fake.refuse = T0 + 75, False  # 15 s late: still its tick, on time
    assert scheduler.run_due() == T0 + 120
    assert fake.pushed == [("poll", "2026-11-23T12:01:00Z")]


# -- real processes ------------------------------------------------------------------

HANDLERS = "tests.periodic_handlers:handlers"
TICK = re.compile(r"schedule: tick@(\S+): job (\S+)( \(pushed before a restart)?")


def _ticks(*procs: Proc) -> dict[str, set[str]]:
    """Tick -> the job ids the schedulers' DEBUG lines gave it."""
    found: dict[str, set[str]] = {}
    for proc in procs:
        for match in proc.matches(TICK.pattern):
            found.setdefault(match[1], set()).add(match[2])
    return found


def _handled(record_dir) -> set[str]:
    return {job_id for entries in read_records(record_dir).values()
            for job_id, _ in entries}  # fmt: skip


def _scheduler_proc(procs, worker, journal, name="scheduler", wait=True):
    proc = start_scheduler(HANDLERS, [worker.address], name=name, wait=wait,
                           journal_dir=journal, log_level="DEBUG")  # fmt: skip
    procs.append(proc)
    return proc


def test_the_scheduler_runs_each_tick_once_and_a_second_one_refuses(
    start_worker, procs, tmp_path, record_dir
):
    worker = start_worker(handler=HANDLERS)
    journal = tmp_path / "schedule"
    scheduler = _scheduler_proc(procs, worker, journal)
    started = time.time()
    second = _scheduler_proc(procs, worker, journal, "second", wait=False)
    second.expected_exit = 1
    assert second.wait_exit(15) == 1, second.tail()
    assert f"another scheduler holds {journal}/scheduler.lock (pid {scheduler.pid})" in (
        second.tail()), second.tail()  # fmt: skip
    time.sleep(max(0.0, started + 6 - time.time()))  # sleep-ok: the run's length
    stopped = time.time()
    assert scheduler.stop() == 0, scheduler.tail()
    ticks = _ticks(scheduler)
    elapsed = int(stopped) - int(started)  # whole seconds in (started, stopped]
    assert abs(len(ticks) - elapsed) <= 1, (len(ticks), elapsed, sorted(ticks))
    assert all(len(ids) == 1 for ids in ticks.values()), ticks
    pushed = set().union(*ticks.values())
    assert _handled(record_dir) == pushed, "each pushed job ran, nothing else"
    scheduler.expect(r"stopped; pushed \d+ ticks, 0 again .* 0 not acknowledged")


def test_kill_9_and_restart_never_runs_one_tick_as_two_jobs(
    start_worker, procs, tmp_path, record_dir
):
    worker = start_worker(handler=HANDLERS)
    journal = tmp_path / "schedule"
    first = _scheduler_proc(procs, worker, journal, "first")
    first.expect(TICK.pattern, timeout=10, times=3)
    first.signal(signal.SIGKILL)
    first.wait_exit(5)
    # The worst moment for a kill: after the last three pushes, before their
    # ticks were written down. The restart pushes them again, key and all.
    state_file = journal / STATE_FILE
    state = json.loads(state_file.read_text())
    state["jobs"]["tick"]["last"] -= 3
    state_file.write_text(json.dumps(state))
    second = _scheduler_proc(procs, worker, journal, "second")
    second.expect(r"schedule: tick@\S+: job \S+$", timeout=10, times=2)  # new ones
    assert second.stop() == 0, second.tail()
    again = [m for m in second.matches(TICK.pattern) if m[3]]
    assert len(again) >= 3, f"the rewound ticks pushed again: {second.tail()}"
    ticks = _ticks(first, second)
    assert all(len(ids) == 1 for ids in ticks.values()), {
        tick: ids for tick, ids in ticks.items() if len(ids) > 1
    }
    seconds = sorted(int(datetime.fromisoformat(t).timestamp()) for t in ticks)
    assert seconds == list(range(seconds[0], seconds[-1] + 1)), (
        "missed='all': the ticks missed while it was down pushed too"
    )
    pushed = set().union(*ticks.values())
    poll_until(lambda: _handled(record_dir), lambda seen: seen == pushed, 10,
               "every tick's job run (those held at the kill replayed)")  # fmt: skip


def test_the_schedule_command_reads_its_settings_and_names_mistakes(
    tmp_path, monkeypatch, caplog
):
    settings = load_schedule(["--handler", HANDLERS], {"WORKERS": "127.0.0.1:4444"})
    assert (settings.handler, settings.journal_dir, settings.dashboard) == (
        HANDLERS, ".greenpipe-schedule", False)  # fmt: skip
    assert [p.name for p in load_schedules(settings.handler)] == ["tick"]
    with pytest.raises(ConfigError, match="HANDLER: expected the Handlers registry"):
        load_schedule([], {})
    with pytest.raises(ConfigError, match="JOURNAL_DIR: expected a directory"):
        load_schedule(["--journal-dir", "off"], {"HANDLER": HANDLERS})
    with pytest.raises(ConfigError, match="is a function, not a Handlers registry"):
        load_schedules("greenpipe.handlers:noop")
    (tmp_path / "nothing_periodic.py").write_text(
        "from greenpipe import Handlers\nhandlers = Handlers()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="declares no periodic jobs; declare them"):
        load_schedules("nothing_periodic:handlers")
    (tmp_path / "ghost.py").write_text(
        "from greenpipe import Handlers\nhandlers = Handlers()\n"
        "handlers.schedule('ghost', every=60)\n"
    )
    with caplog.at_level(logging.WARNING, "greenpipe.scheduler"):
        load_schedules("ghost:handlers")
    assert "'ghost' has no handler in ghost:handlers" in caplog.text
    (tmp_path / "bad_cron.py").write_text(
        "from greenpipe import Handlers\nhandlers = Handlers()\n\n\n"
        "@handlers.periodic('0 25 * * *')\ndef nightly(job):\n    return None\n"
    )  # a refused declaration: exit 2 naming the user's line, not a traceback
    with pytest.raises(ConfigError, match=r"HANDLER: importing 'bad_cron' raised "
                       r"ValueError at \S*bad_cron.py:5: cron='0 25 \* \* \*'"):  # fmt: skip
        load_schedules("bad_cron:handlers")
    done = subprocess.run([PYTHON, "-m", "greenpipe", "schedule", "--help"], cwd=ROOT,
                          env={**os.environ, "COLUMNS": "200"}, capture_output=True,
                          text=True, timeout=30)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "--handler HANDLER" in done.stdout and ".greenpipe-schedule" in done.stdout


def test_a_web_sharing_the_schedulers_result_store_answers_its_jobs(
    start_worker, start_web, procs, tmp_path
):
    """Issue 33: jobs the scheduler pushed answered 404 on the web. With one
    RESULT_STORE for both, the web answers them once they finished."""
    worker = start_worker(handler=HANDLERS)
    store = tmp_path / "results.sqlite3"
    web = start_web([worker], result_store=store)
    web.proc.expect(r"result store \S*results\.sqlite3: finished jobs' records")
    scheduler = start_scheduler(HANDLERS, [worker.address], journal_dir=tmp_path / "s",
                                log_level="DEBUG", result_store=store)  # fmt: skip
    procs.append(scheduler)
    scheduler.expect(TICK.pattern, timeout=10, times=2)
    assert scheduler.stop() == 0, scheduler.tail()
    ids = set().union(*_ticks(scheduler).values())
    assert all(job_id.startswith("s") for job_id in ids), "a scheduler's ids"
    old = f"{next(iter(ids))[:10]}{int(time.time()) - 3600:08x}{'0' * 32}"
    status, _, answer = web.get(f"/jobs/{old}")
    assert status == 404 and "a scheduler" in answer["detail"], (status, answer)
    for job_id in ids:
        status, _, record = web.get(f"/jobs/{job_id}")
        assert status == 200 and record["status"] == "done", (job_id, status, record)
        assert record["name"] == "tick"
