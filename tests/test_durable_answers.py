"""Every answer is as durable as a 202 (issue 30, defects 1 and 2).

A cancel answered ``cancelled`` and a retry said to be ``retrying`` are what a
crash must leave: with JOURNAL_SYNC=batch, their records synced before the
answer; on a full disk, a cancel answers 503 and the job keeps its place, a
retry stays settling (sent nowhere) until its record is written. A real
`Dispatcher` on scripted links with a real `Journal`, its disk slowed or
filled on purpose; a crash is the journal's folder copied as kill -9 (or, in
batch mode, a power loss) leaves it.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from pathlib import Path

import gevent
import pytest

from greenpipe import protocol
from greenpipe.errors import Unavailable
from greenpipe.jobs import Envelope
from greenpipe.journal import Journal, tail
from tests.test_core import Clock, hear, make, ready

pytestmark = pytest.mark.inprocess  # make test-fast


class Disk:
    """The journal's syncs, slowed (`delay` s, on the event loop's clock) and
    noted: the length of each file at its last sync is what a power loss keeps."""

    def __init__(self, monkeypatch, delay: float = 0.0) -> None:
        self.delay = delay
        self.synced: dict[str, int] = {}
        self.full = False
        real = tail._offload

        def offload(call, *args):
            if self.delay:
                gevent.sleep(self.delay)  # sleep-ok: the deliberate slow disk
            result = real(call, *args)
            path = os.readlink(f"/proc/self/fd/{args[0]}")
            self.synced[path] = os.fstat(args[0]).st_size
            return result

        disk = self

        class Os:
            def __getattr__(self, name: str):
                return getattr(os, name)

            def write(self, fd, data):
                if disk.full:
                    raise OSError(errno.ENOSPC, "No space left on device")
                return os.write(fd, data)

        monkeypatch.setattr(tail, "_offload", offload)
        monkeypatch.setattr(tail, "os", Os())

    def crash(self, source: Path, dest: Path, power_loss: bool) -> list[Envelope]:
        """The journal as kill -9 (or a power loss) leaves it: the jobs it replays."""
        shutil.copytree(source, dest)
        if power_loss:
            for segment in dest.glob("slot-*/seg-*.log"):
                original = str(source / segment.relative_to(dest))
                with open(segment, "r+b") as file:
                    file.truncate(self.synced.get(original, 0))
        disk, tail.os = tail.os, os  # the restart's disk has room
        journal = Journal(str(dest))
        try:
            return journal.open().jobs
        finally:
            journal.close()
            tail.os = disk


def _web(tmp_path: Path, sync: str):
    d = make(Clock(), workers="127.0.0.1:1", journal_dir=tmp_path / "journal",
             journal_sync=sync)  # fmt: skip
    d.start()
    ready(d, d.links[0])
    return d


def _push(d, delay: float = 0.0) -> Envelope:
    job = Envelope.new(b"POST", b"/jobs", b"", b"", b"{}")
    if delay:
        job.not_before = time.time() + delay
    return d.submit(job)


def _until(done, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        gevent.sleep(0.001)  # sleep-ok: a yield in a polling loop with a deadline


def _ask_retry(d, job: Envelope, after: float) -> None:
    """The worker running `job` answers Retry(after=`after`)."""
    payload = protocol.retry_payload(after, b"E: later")
    result = protocol.encode_result(job.id.encode(), protocol.RETRY, payload)
    hear(d, d.links[0], protocol.encode_acks([], [result]))


def test_batch_a_cancel_and_a_retry_answered_during_a_groups_sync_survive_a_crash(
    tmp_path, monkeypatch
):
    """Defect 1: A delayed an hour, B in flight; another client's job starts a
    group whose sync takes 0.2 s; during it cancel(A) and B's Retry(after=3600).
    Once the cancel answered ``cancelled`` and B's status says ``retrying``, a
    crash (kill -9, or a power loss: batch mode promises both) must neither
    run A nor run B before its time."""
    d = _web(tmp_path, "batch")
    try:
        a, b = _push(d, delay=3600), _push(d)
        _until(lambda: d.links[0].jobs, "B sent")
        disk = Disk(monkeypatch, delay=0.2)
        other = gevent.spawn(_push, d)
        _until(lambda: d.admission._commit.committing, "a group in its sync")
        cancel = gevent.spawn(d.cancel, a.id)
        _ask_retry(d, b, 3600)
        _until(lambda: cancel.ready() and d.status(b.id)["status"] == "retrying",
               "the cancel answered and B retrying")  # fmt: skip
        assert cancel.value["status"] == "cancelled", cancel.value
        next_at = d.status(b.id)["next_at"]
        for power_loss in (False, True):
            jobs = disk.crash(tmp_path / "journal", tmp_path / f"crash-{power_loss}",
                              power_loss)  # fmt: skip
            replayed = {job.id: job for job in jobs}
            assert a.id not in replayed, (
                f"cancel({a.id}) answered cancelled during a group's sync; after a "
                f"crash (power loss: {power_loss}) the job comes back and runs"
            )
            assert replayed[b.id].not_before >= next_at - 0.001, (
                f"B's status said retrying at {next_at}; after a crash (power loss: "
                f"{power_loss}) it comes back due at {replayed[b.id].not_before}: "
                "it runs at once"
            )
        other.join(5)
    finally:
        d.close()


def test_a_cancel_on_a_full_disk_answers_503_and_the_job_keeps_its_place(
    tmp_path, monkeypatch
):
    """Defect 2: default mode, disk full: cancel(A) answered 200 ``cancelled``,
    /healthz said the journal was fine, the record waited in memory, and after
    kill -9 the job ran. It must answer 503 and change nothing; once the disk
    has room again, the cancel holds."""
    d = _web(tmp_path, "none")
    try:
        a = _push(d, delay=3600)
        disk = Disk(monkeypatch)
        disk.full = True
        try:
            answer: object = d.cancel(a.id)
        except Unavailable as exc:
            answer = exc
        replayed = [j.id for j in disk.crash(tmp_path / "journal", tmp_path / "c1",
                                             False)]  # fmt: skip
        assert isinstance(answer, Unavailable), (
            f"cancel on a full disk answered {answer}; journal healthy: "
            f"{d.health()[1]['journal']}; after kill -9 the job comes back: "
            f"{a.id in replayed}"
        )
        assert a.id in replayed and d.status(a.id)["status"] == "scheduled"
        assert d.health()[1]["journal"] != "ok", "the journal said healthy"
        disk.full = False
        assert d.cancel(a.id)["status"] == "cancelled"
        replayed = [j.id for j in disk.crash(tmp_path / "journal", tmp_path / "c2",
                                             False)]  # fmt: skip
        assert a.id not in replayed, "cancelled, and replayed"
    finally:
        d.close()


def test_a_retry_on_a_full_disk_is_held_only_once_its_record_is_written(
    tmp_path, monkeypatch
):
    """Defect 2, a retry's LATER record: on a full disk the retry was said to
    be ``retrying`` an hour ahead while its record waited in memory; a kill -9
    then ran it at once. It now stays settling (``in_flight``, sent nowhere:
    a restart would re-send it, as after a lost worker) until a heartbeat
    writes its record; then it waits its time, across a crash too."""
    d = _web(tmp_path, "none")
    try:
        b = _push(d)
        _until(lambda: d.links[0].jobs, "B sent")
        disk = Disk(monkeypatch)
        disk.full = True
        _ask_retry(d, b, 3600)
        d.flush()  # the dispatcher's turn: its group fails
        said = d.status(b.id)
        replayed = {j.id: j for j in disk.crash(tmp_path / "journal",
                                                tmp_path / "c1", False)}  # fmt: skip
        if said["status"] == "retrying":
            assert replayed[b.id].not_before >= said["next_at"] - 0.001, (
                f"B said retrying until {said['next_at']} on a full disk; after "
                f"kill -9 it comes back due at {replayed[b.id].not_before}: at once"
            )
        assert said["status"] == "in_flight" and d.later.get(b.id) is None, said
        assert not d._fresh and not d.links[0].jobs, "sent nowhere meanwhile"
        disk.full = False
        d.tick()  # a heartbeat writes it again
        d.flush()
        said = d.status(b.id)
        assert said["status"] == "retrying", said
        replayed = {j.id: j for j in disk.crash(tmp_path / "journal",
                                                tmp_path / "c2", False)}  # fmt: skip
        assert replayed[b.id].not_before >= said["next_at"] - 0.001
    finally:
        d.close()


def test_a_cancel_of_a_running_job_is_kept_before_it_answers_cancelling(
    tmp_path, monkeypatch
):
    """Found by the lifecycle model (tests/test_lifecycle_model.py): a cancel of
    a job a worker runs answered ``cancelling`` with nothing journaled; a kill
    -9 then replayed the job, which ran again. It is now kept first (503 on a
    full disk, and no CANCEL sent), then the worker is told."""
    d = _web(tmp_path, "none")
    try:
        b = _push(d)
        _until(lambda: d.links[0].jobs, "B sent")
        disk = Disk(monkeypatch)
        disk.full = True
        try:
            answer: object = d.cancel(b.id)
        except Unavailable as exc:
            answer = exc
        cancels = [m for m in d.links[0].sent_messages if m[0] == protocol.CANCEL]
        if isinstance(answer, Unavailable):
            assert not cancels, "answered 503, yet the worker was told to cancel"
            disk.full = False
            answer = d.cancel(b.id)
        assert answer["cancelling"], answer
        replayed = [j.id for j in disk.crash(tmp_path / "journal", tmp_path / "c1",
                                             False)]  # fmt: skip
        assert b.id not in replayed, (
            f"cancel({b.id}) answered cancelling; after kill -9 the job is "
            "replayed and runs again"
        )
    finally:
        d.close()


def test_two_cancels_of_a_retry_being_journaled_both_answer_cancelled(
    tmp_path, monkeypatch
):
    """Found by the lifecycle model: two cancels that waited for a retry's
    record; the first took the job out of the timer to write its own record,
    the second found it nowhere and answered None (a 404)."""
    d = _web(tmp_path, "batch")
    try:
        b = _push(d)
        _until(lambda: d.links[0].jobs, "B sent")
        Disk(monkeypatch, delay=0.2)
        _ask_retry(d, b, 3600)  # its LATER record goes into a group: a slow sync
        first, second = gevent.spawn(d.cancel, b.id), gevent.spawn(d.cancel, b.id)
        gevent.joinall([first, second], timeout=5, raise_error=True)
        answers = [each.value and each.value["status"] for each in (first, second)]
        assert answers == ["cancelled", "cancelled"], answers
    finally:
        d.close()


def _retry_frames(job, after: float) -> list[bytes]:
    from greenpipe import protocol

    payload = protocol.retry_payload(after, b"E: later")
    result = protocol.encode_result(job.id.encode(), protocol.RETRY, payload)
    return protocol.encode_acks([], [result])


def test_a_retry_read_during_the_stops_last_group_write_is_kept(tmp_path, monkeypatch):
    """Review of issue 30 (part 2). B1 and B2 run (JOURNAL_SYNC=batch, syncs of 0.2 s). The stop begins as
    B1's worker answers Retry(after=3600) (read before Dispatcher.close's first
    hear: its LATER rides in close's last group); B2's worker answers
    Retry(after=3600) while that group syncs. A clean stop must run neither
    early (GroupCommit.close: "a clean stop must not run a retry early")."""
    d = _web(tmp_path, "batch")
    b1, b2 = _push(d), _push(d)
    _until(lambda: len(d.links[0].jobs) == 2, "B1 and B2 sent")
    Disk(monkeypatch, delay=0.2)  # every sync takes 0.2 s
    link = d.links[0]

    def arrive():  # the reader reads B2's answer during close's group sync
        _until(lambda: d.journal._tail.busy, "close's group in its sync")
        link._unread.append(_retry_frames(b2, 3600))
        d.inbox.post(link)

    gevent.spawn(arrive)
    link._unread.append(_retry_frames(b1, 3600))  # read as the stop begins
    d.inbox.post(link)
    d.close()
    gevent.sleep(0.5)  # sleep-ok: a stray writer, had close() left one, would write now
    j = Journal(str(tmp_path / "journal"))
    jobs = {job.id: job for job in j.open().jobs}
    j.close()
    now = time.time()
    assert jobs[b1.id].not_before > now + 3000
    assert jobs[b2.id].not_before > now + 3000, (
        "B2 asked Retry(after=3600) before the stop ended; the next start runs it now"
    )
