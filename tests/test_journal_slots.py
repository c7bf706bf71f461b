"""Slots: one per web process, and the adoption of a crashed one's, a crash
during the adoption too. A real `Journal` on tmp_path, one process.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from greenpipe.errors import ConfigError
from greenpipe.jobs import Envelope
from greenpipe.journal import (
    Journal,
)
from greenpipe.journal.slots import Identity
from tests.journal_support import (
    make_jobs,
    make_named_jobs,
    reopened,
    segment_paths,
)

pytestmark = pytest.mark.inprocess  # make test-fast


class Crash(BaseException):
    """Stands for a kill -9 at that point."""


def _orphan(directory: Path, jobs: list[Envelope], keys=None) -> None:
    alive, dying = Journal(str(directory)), Journal(str(directory))
    alive.open()
    dying.open()
    dying.append_jobs(jobs, keys)
    dying.close()
    alive.close()


def test_each_process_its_own_slot_and_orphans_are_adopted(tmp_path):
    alive = Journal(str(tmp_path))
    alive.open()
    dying = Journal(str(tmp_path))
    dying.open()
    assert (alive.slot, dying.slot) == (0, 1), "never two writers on one journal"
    dying.append_jobs(make_named_jobs(2))
    dying.close()  # as the kernel does for a process killed with -9
    alive.close()
    heir = Journal(str(tmp_path))
    replay = heir.open()
    assert heir.slot == 0 and replay.adopted == [1]
    assert sorted(job.id for job in replay.jobs) == ["t-0000", "t-0001"]
    assert not list((tmp_path / "slot-1").glob("seg-*")), "now owed by slot 0"
    heir.close()
    again = Journal(str(tmp_path))
    assert len(again.open().jobs) == 2, "adopted jobs are in the heir's journal"
    again.close()


def test_a_journal_directory_that_cannot_be_made_is_a_config_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="JOURNAL_DIR: cannot create"):
        Journal(str(blocker / "journal")).open()


def test_a_crash_during_adoption_replays_each_job_once(tmp_path, monkeypatch):
    _orphan(tmp_path, make_jobs(3))

    def crash(path: str) -> None:
        raise Crash(path)

    heir = Journal(str(tmp_path))
    monkeypatch.setattr(os, "unlink", crash)
    with pytest.raises(Crash):  # after the copy, before the orphan's files go
        heir.open()
    monkeypatch.undo()
    os.close(heir._tail.fd)
    os.close(heir._lock_fd)
    for fd in range(3, 256):  # the orphan's lock, as kill -9 would drop it
        try:
            os.fstat(fd)
        except OSError:
            continue
        if os.readlink(f"/proc/self/fd/{fd}").endswith("slot-1.lock"):
            os.close(fd)
    journal = Journal(str(tmp_path))
    replay = journal.open()
    ids = [job.id for job in replay.jobs]
    assert sorted(ids) == ["c-00000", "c-00001", "c-00002"], "once each"
    journal.acked(replay.jobs)
    journal.append_jobs(make_jobs(1, start=9))
    journal.acked(make_jobs(1, start=9))
    journal.append_jobs(make_jobs(1, start=10))  # compaction: nothing older stays
    assert len(segment_paths(tmp_path)) == 1, segment_paths(tmp_path)
    journal.close()


def test_adopted_jobs_keep_their_keys(tmp_path):
    _orphan(tmp_path, make_jobs(2), [("order-1", 1000.0), ("order-2", 2000.0)])
    heir = Journal(str(tmp_path))
    assert heir.open().adopted == [1]
    heir.close()  # (a crash here, before any compaction of the heir's)
    assert reopened(tmp_path)[1] == {
        "order-1": ("c-00000", 1000.0),
        "order-2": ("c-00001", 2000.0),
    }


def test_a_crash_during_adoption_then_two_webs_starting_together_run_jobs_twice(
    tmp_path, monkeypatch
):
    """The heir carries the orphan's jobs into its slot, then is killed before
    the orphan's files go (the case the docstring says replay deduplicates).
    Two web processes then start together (WEB_PROCESSES, or honcho after a
    crash): one takes slot 0 (the copies), the other slot 1 (the originals) as
    its *own* slot; neither sees the other's as an orphan, so both replay the
    same ids."""
    import fcntl

    dying = Journal(str(tmp_path))
    blocker = Journal(str(tmp_path))
    blocker.open()  # slot 0 busy: the dying one gets slot 1
    dying.open()
    jobs = make_jobs(3)
    dying.append_jobs(jobs)
    dying.close()
    blocker.close()

    heir = Journal(str(tmp_path))

    def killed(folder):
        raise Crash("kill -9 between the carry and the orphan's removal")

    monkeypatch.setattr(heir._slots, "remove_slot", killed)
    with pytest.raises(Crash):
        heir.open()  # takes slot 0, copies slot 1's jobs into it
    for name in os.listdir("/proc/self/fd"):  # the kernel drops them on kill -9
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith(str(tmp_path)):
            os.close(int(name))

    # Two webs start at once: the first holds slot 0's lock while the second
    # looks for a free slot, so the second takes slot 1 as its own.
    path = tmp_path / "slot-0.lock"
    first_lock = os.open(path, os.O_RDWR)
    fcntl.flock(first_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    second = Journal(str(tmp_path))
    second_ids = sorted(job.id for job in second.open().jobs)
    assert second.slot == 1
    os.close(first_lock)  # the first web's open() goes on, now holding slot 0
    first = Journal(str(tmp_path))
    first_ids = sorted(job.id for job in first.open().jobs)
    assert first.slot == 0
    first.close()
    second.close()
    twice = set(first_ids) & set(second_ids)
    assert not twice, f"replayed by both webs: {sorted(twice)}"


# -- issues 30-31: adoption while running, a journal that knows its web ----------


def test_a_running_process_adopts_a_slot_freed_after_its_start(tmp_path):
    """Issue 30 #8: orphans were adopted only at open; a rolling restart's last
    old process left its waiting jobs in a free slot no process took."""
    alive, stopping = Journal(str(tmp_path)), Journal(str(tmp_path))
    alive.open()
    stopping.open()
    waiting = make_named_jobs(3)
    for job in waiting:
        job.not_before = time.time() + 60
    stopping.append_jobs(waiting, [("k-0", time.time()), ("", 0.0), ("", 0.0)])
    assert not alive.adopt().adopted, "slot 1 is held: nothing to adopt"
    stopping.close()  # a clean stop with jobs still waiting
    replay = alive.adopt()
    assert replay.adopted == [1]
    assert sorted(job.id for job in replay.jobs) == ["t-0000", "t-0001", "t-0002"]
    assert all(job.not_before > time.time() + 50 for job in replay.jobs), "waits on"
    assert replay.keys["k-0"][0] == "t-0000"
    assert not list((tmp_path / "slot-1").glob("seg-*")), "now owed by slot 0"
    assert not alive.adopt().adopted, "once"
    alive.acked(replay.jobs[:1])
    alive.close()
    ids, keys = reopened(tmp_path)
    assert ids == ["t-0001", "t-0002"] and keys["k-0"][0] == "t-0000"


def test_nothing_owed_is_adopted_without_a_warning(tmp_path, caplog):
    """Issue 31: clean restarts logged "adopted slots 1 (0 owed)" as a WARNING."""
    alive, other = Journal(str(tmp_path)), Journal(str(tmp_path))
    alive.open()
    other.open()
    jobs = make_named_jobs(1)
    other.append_jobs(jobs, [("k", time.time())])
    other.acked(jobs)
    other.close()
    alive.close()
    with caplog.at_level("INFO", logger="greenpipe.journal"):
        heir = Journal(str(tmp_path))
        assert heir.open().adopted == [1]
        heir.close()
    adopted = [r for r in caplog.records if "adopted slots" in r.getMessage()]
    assert adopted and all(r.levelname == "INFO" for r in adopted), [
        (r.levelname, r.getMessage()) for r in caplog.records
    ]


def test_a_journal_is_refused_to_another_web_and_kept_across_worker_changes(
    tmp_path,
):
    """Issue 31 #9: another web (other workers, no CURVE) adopted 603 owed jobs."""
    from greenpipe.journal.slots import Identity

    ours = Identity(("tcp://127.0.0.1:4444", "tcp://127.0.0.1:4445"), "", True)
    first = Journal(str(tmp_path), identity=ours)
    first.open()
    first.append_jobs(make_named_jobs(2))
    first.close()
    stranger = Identity(("tcp://127.0.0.1:5555",), "", False)
    with pytest.raises(ConfigError) as refused:
        Journal(str(tmp_path), identity=stranger).open()
    said = str(refused.value)
    assert "127.0.0.1:4445" in said and "127.0.0.1:5555" in said, said
    assert "CURVE on" in said and "CURVE off" in said, said
    assert "JOURNAL_TAKEOVER=true" in said and "its own JOURNAL_DIR" in said, said
    # One worker added, one removed across a restart: the same web.
    grown = Identity(("tcp://127.0.0.1:4445", "tcp://127.0.0.1:4446"), "", True)
    assert reopened(tmp_path, identity=grown)[0] == ["t-0000", "t-0001"]
    # WORKERS_FILE: its content changes (SIGHUP), its path names the web.
    filed = Identity(("tcp://10.0.0.9:4444",), "/etc/w", True)
    with pytest.raises(ConfigError):
        reopened(tmp_path, identity=filed)
    assert reopened(tmp_path, identity=filed, takeover=True)[0] == ["t-0000", "t-0001"]
    moved = Identity(("tcp://10.0.0.7:4444",), "/etc/w", True)
    assert reopened(tmp_path, identity=moved)[0] == ["t-0000", "t-0001"]


def test_a_leftover_adopted_folder_without_jobs_is_not_adopted_each_tick(
    tmp_path, monkeypatch
):
    """A folder that could not be removed (a damaged segment moved aside in it)
    must not be read, nor the keys file rewritten, at every heartbeat."""
    from greenpipe.journal import compaction

    alive = Journal(str(tmp_path))
    alive.open()
    leftover = tmp_path / f"adopted-slot-1.1-by-{alive.slot}"
    leftover.mkdir()
    (leftover / "seg-00000001.log.damaged-1").write_bytes(b"x")
    rewrites = []
    monkeypatch.setattr(compaction, "write_keys", lambda *a: rewrites.append(a))
    for _ in range(3):
        assert not alive.adopt().adopted
    assert not rewrites, "nothing to adopt: nothing written"
    alive.close()


def test_an_empty_web_json_is_claimed_again_not_a_recursion(tmp_path, caplog):
    """Review of issue 31 (#9): web.json linked into place unsynced, a power loss
    can leave it empty; Slots.claim recursed for ever on it. An unreadable
    identity is no identity: this web claims the journal, with a warning."""
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "web.json").write_bytes(b"")
    journal = Journal(str(tmp_path / "j"), identity=Identity(("tcp://127.0.0.1:1",)))
    recursed = False
    try:
        journal.open()
    except RecursionError:
        recursed = True  # (its traceback: 1000 frames; not re-raised)
    finally:
        journal.close()
    assert not recursed, (
        "Journal.open: RecursionError on an empty web.json (Slots.claim)"
    )
    assert Identity.decode((tmp_path / "j" / "web.json").read_bytes()) == Identity(
        ("tcp://127.0.0.1:1",)
    )
    assert "web.json" in caplog.text and "unreadable" in caplog.text, caplog.text
