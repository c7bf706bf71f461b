"""A job's lifecycle against a model of what the README promises (issue 30).

Seeded random schedules drive a real `Dispatcher` (scripted links, a fake
clock, as tests/test_core.py) with a real `Journal` whose syncs a scripted
disk completes, delays or fails: pushes (plain, delayed, keyed), worker
outcomes (ok, failure, Retry(after), a time limit: a failure its policy may
retry), workers lost, cancels at every state, group commits with slow or
failing syncs, a full disk, kill -9 of the web at any point (the journal's
folder copied as the crash leaves it; in batch mode, a power loss too:
each segment back to its last sync), restarts, and adoption of the crashed
slot by a web in another slot. After every step, and at the end, `check`
holds the web to the promises (see `Model`); a failing seed prints its
schedule.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import os
import random
import shutil
import time
from pathlib import Path

import gevent
import gevent.event
import pytest

from greenpipe import protocol
from greenpipe.config import WebSettings
from greenpipe.dispatcher import Dispatcher
from greenpipe.errors import Unavailable
from greenpipe.jobs import Envelope
from greenpipe.journal import Journal, files, slots, tail
from greenpipe.journal.slots import Slots
from greenpipe.link import FULL, READY
from tests.test_core import Clock, ScriptedLink, hear, make, ready

pytestmark = pytest.mark.inprocess  # make test-fast

MAX_DELIVERIES = 3
DELAYS = (5.0, 60.0, 3600.0)  # seconds: a delayed push, a Retry(after=)
# Seconds of real time a schedule may take: due times are wall times, which
# barely move while the fake clock jumps (an early run is early by >= 5 s).
SLACK = 2.0


@functools.cache
def _settings(sync: str) -> WebSettings:
    """The web's settings (read once: argparse costs more than a schedule step)."""
    return make(Clock(), workers="127.0.0.1:1,127.0.0.1:2", journal_sync=sync,
                max_deliveries=MAX_DELIVERIES).settings  # fmt: skip


def _scripted(index, endpoint, inbox) -> ScriptedLink:
    return ScriptedLink(index, endpoint, None, inbox)


class Disk:
    """The journal's syncs and writes, scripted: a sync waits until the model
    completes or fails it; a full disk refuses writes; `synced` is each
    segment's length at its last sync (what a power loss keeps)."""

    def __init__(self) -> None:
        self.pending: list[gevent.event.AsyncResult] = []
        self.synced: dict[str, int] = {}
        self.full = False
        self.slow = False  # batch mode: syncs wait for the model

    def offload(self, call, *args):
        if self.slow:
            done = gevent.event.AsyncResult()
            self.pending.append(done)
            if not done.get():
                raise OSError(errno.EIO, "scripted: the sync failed")
        path = os.readlink(f"/proc/self/fd/{args[0]}")
        self.synced[os.path.realpath(path)] = os.fstat(args[0]).st_size  # the model

    def write(self, fd, data):
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, data)

    def __getattr__(self, name: str):
        return getattr(os, name)


class Job:
    """What the model knows of one job (by id)."""

    def __init__(self, job_id: str, retries: int, due: float) -> None:
        self.id, self.retries, self.due = job_id, retries, due
        self.refused = False  # answered 503
        self.accepted = False  # answered 202
        self.cancelled = False  # a cancel answered `cancelled`
        self.cancelling = False  # a cancel answered `cancelling`
        self.finished = ""  # the outcome a worker gave (done, failed, cancelled)
        self.asking = 0  # cancels not answered yet (at a crash: in doubt for good)
        self.promised = 0.0  # the next_at a status said last (wall time)
        self.sends: dict[tuple[int, int], int] = {}  # (web, run) -> deliveries


class Model:
    """The schedule runner and its checker; `log` is the schedule so far.

    Invariants: a job answered 202 runs to an outcome or is cancelled (at the
    end); a job answered 503 never runs; no run starts before its due time (a
    delayed push's, or a retry's once its status said `retrying`); no run
    starts after a cancel answered `cancelled` or `cancelling` (a running one
    stops with Cancelled or had finished); a job's runs are at most its
    retries + 1, and deliveries of one run in one web at most MAX_DELIVERIES
    (re-sends after a web's crash counted apart); every status answer agrees
    with the model; after the last stop, no slot holds anything owed.
    """

    def __init__(self, root: Path, seed: int, sync: str) -> None:
        self.root, self.seed, self.sync = root, seed, sync
        self.rng = random.Random(seed)
        self.log: list[str] = []
        self.jobs: dict[str, Job] = {}
        self.clock = Clock()
        self.disk = Disk()
        self.webs = 0  # incarnations of the web
        self.requests: list[tuple[int, str, gevent.Greenlet]] = []
        # (job, its retries, its due time): known before its answer
        self.pushed: list[tuple[Envelope, int, float]] = []
        self.folder = root / "web-0"
        self.durable: dict[str, int] = {}  # segment -> bytes synced in earlier lives
        self.d = self._start()

    # -- the web's lives -----------------------------------------------------------

    def _start(self):
        self.webs += 1
        settings = dataclasses.replace(_settings(self.sync),
                                       journal_dir=str(self.folder))  # fmt: skip
        d = Dispatcher(settings, name="model web", clock=self.clock,
                       link_factory=_scripted)  # fmt: skip
        d.start()
        d._greenlet.kill()  # the model turns the dispatcher's wheel itself
        for link in d.links:
            ready(d, link)
        self.d, self.seen = d, {link: 0 for link in d.links}  # messages read
        d.flush()
        self.observe()
        return d

    def crash(self) -> None:
        """kill -9 (and in batch mode perhaps a power loss); restart, perhaps in
        another slot that adopts the crashed one."""
        power = self.sync == "batch" and self.rng.random() < 0.5
        adopt = self.rng.random() < 0.3
        self.log.append(f"crash power_loss={power} adopted={adopt}")
        image = self.root / f"web-{self.webs}"
        shutil.copytree(self.folder, image, ignore=shutil.ignore_patterns("*.lock"))
        own = Path(self.d.journal.path).name
        moved = ("slot-3" if own == "slot-2" else "slot-2") if adopt else own
        synced = {**self.durable, **self.disk.synced}  # over every life so far
        self.durable = {}
        for segment in image.glob("*/seg-*.log"):
            original = os.path.realpath(self.folder / segment.relative_to(image))
            kept = min(synced.get(original, 0), segment.stat().st_size)
            if power:  # what was not synced is gone
                os.truncate(segment, kept)
            path = str(segment).replace(f"/{own}/", f"/{moved}/")
            self.durable[os.path.realpath(path)] = kept
        self.stop_old()
        self.folder = image
        sibling = -1
        if adopt:  # another web holds slot 0: this one takes 1, adopts the crashed
            os.rename(image / own, image / moved)
            sibling = Slots(str(image)).lock(0)
        self.d = self._start()
        if sibling >= 0:
            os.close(sibling)

    def stop_old(self) -> None:
        """The crashed web's greenlets and answers go (its files are its own)."""
        for _, _, request in self.requests:
            request.kill(block=False)
        self.requests = []
        for done in self.disk.pending:
            done.set(False)
        self.disk.pending, self.disk.synced = [], {}
        self.disk.full = self.disk.slow = False
        gevent.sleep(0)  # sleep-ok: an idle yield (the old web's writer ends)
        self.d.close()

    # -- steps ------------------------------------------------------------------------

    def push(self) -> None:
        rng = self.rng
        delay = rng.choice(DELAYS) if rng.random() < 0.3 else 0.0
        key = f"k{rng.randrange(8)}" if rng.random() < 0.2 else ""
        envelope = Envelope.new(b"POST", b"/jobs", b"", b"", b"{}")
        if delay:
            envelope.not_before = time.time() + delay
        retries = rng.choice((0, 0, 1, 2))
        web = self.webs
        self.log.append(f"push delay={delay} key={key!r} retries={retries}")
        due = self.clock.now + delay
        self.pushed.append((envelope, retries, due))

        def request() -> None:
            try:
                job = self.d.submit(envelope, key)
            except Unavailable:
                if envelope.id:
                    self._job(envelope.id, retries, due).refused = True
                return
            if web == self.webs:  # (a repeated key: its first job's)
                self._job(job.id, retries, due).accepted = True

        self.requests.append((web, "push", gevent.spawn(request)))

    def _job(self, job_id: str, retries: int, due: float) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            job = self.jobs[job_id] = Job(job_id, retries, due)
        return job

    def cancel(self) -> None:
        known = [job for job in self.jobs.values() if job.accepted]
        if not known:
            return
        job = self.rng.choice(known)
        web = self.webs
        self.log.append(f"cancel {job.id}")

        job.asking += 1  # a crash before the answer leaves it in doubt

        def request() -> None:
            try:
                answer = self.d.cancel(job.id)
            except Unavailable:  # nothing changed
                job.asking -= 1
                return
            job.asking -= 1
            if web != self.webs or answer is None:
                return
            if answer["status"] == "cancelled":
                job.cancelled = True
            elif answer.get("cancelling"):
                job.cancelling = True

        self.requests.append((web, "cancel", gevent.spawn(request)))

    def work(self) -> None:
        """A worker answers one job it holds: ok, a failure, Retry(after), a
        time limit (a failure), or Cancelled if a CANCEL reached it."""
        held = [(link, key) for link in self.d.links for key in link.jobs]
        if not held:
            return
        link, key = self.rng.choice(held)
        envelope = link.jobs[key]
        job = self.jobs[envelope.id]
        cancelled = key in self._cancels(link)
        what = self.rng.choice(("ok", "fail", "retry", "limit"))
        if cancelled and self.rng.random() < 0.7:
            what = "cancelled"
        self.log.append(f"work {envelope.id} on {link.name}: {what}")
        if what == "ok":
            job.finished = "done"
            hear(self.d, link, protocol.encode_acks([key]))
            return
        if what == "cancelled":
            job.finished = "cancelled"
            result = protocol.encode_result(key, protocol.CANCELLED, b"cancelled")
        elif envelope.retries < job.retries:  # its policy: run it again
            after = self.rng.choice(DELAYS) if what == "retry" else DELAYS[0]
            payload = protocol.retry_payload(after, b"E: " + what.encode())
            result = protocol.encode_result(key, protocol.RETRY, payload)
        else:
            job.finished = "failed"
            result = protocol.encode_result(key, protocol.FAILED, b"E: final")
        hear(self.d, link, protocol.encode_acks([], [result]))

    def _cancels(self, link) -> set[bytes]:
        return {key for message in link.sent_messages
                if message[0] == protocol.CANCEL for key in message[1].split()}  # fmt: skip

    def lose(self) -> None:
        link = self.rng.choice(self.d.links)
        self.log.append(f"lose {link.name}")
        self.d._lose(link, "killed")  # its jobs go elsewhere
        self.reconnect()

    def reconnect(self) -> None:
        """Workers lost come back (their READY)."""
        for link in self.d.links:
            if link.state not in (READY, FULL):
                ready(self.d, link)

    def step(self) -> None:
        rng, d = self.rng, self.d
        roll = rng.random()
        if roll < 0.25:
            self.push()
        elif roll < 0.45:
            self.work()
        elif roll < 0.55:
            self.cancel()
        elif roll < 0.65:
            seconds = rng.choice((1.0, 10.0, 100.0, 4000.0))
            self.log.append(f"clock +{seconds}")
            self.clock.now += seconds
            for link in d.links:  # alive: only the backstop loses a worker
                hear(d, link, [protocol.HEARTBEAT])
            d.tick()
            self.reconnect()
        elif roll < 0.72 and self.disk.pending:
            ok = rng.random() < 0.8
            self.log.append(f"sync {'completes' if ok else 'fails'}")
            self.disk.pending.pop(0).set(ok)
        elif roll < 0.76:
            self.disk.full = not self.disk.full
            self.log.append(f"disk full={self.disk.full}")
        elif roll < 0.79 and self.sync == "batch":
            self.disk.slow = not self.disk.slow
            self.log.append(f"disk slow={self.disk.slow}")
            if not self.disk.slow:
                for done in self.disk.pending:
                    done.set(True)
                self.disk.pending = []
        elif roll < 0.82:
            self.lose()
        elif roll < 0.85:
            self.crash()
            return
        self.turn()

    def turn(self) -> None:
        """The dispatcher's turn: read, write the group, send; requests wake."""
        self.observe()  # what the step sent (a loss re-sends nothing by itself)
        for _ in range(3):
            gevent.sleep(0)  # sleep-ok: idle yields (parked requests and writers run)
            self.d.flush()
            self.observe()
        self.check()

    # -- the checker ---------------------------------------------------------------

    def observe(self) -> None:
        """What the workers were sent since the last look: runs started."""
        now = self.clock.now
        for link in self.d.links:
            messages = link.sent_messages[self.seen[link] :]
            self.seen[link] = len(link.sent_messages)
            for message in messages:
                if message[0] != protocol.JOBS:
                    continue
                for sent in protocol.decode_jobs(message[1]):
                    self._started(self.jobs.get(sent.id), sent, now)

    def _started(self, job: Job | None, sent, now: float) -> None:
        if job is None:  # its request was cut off by a crash: never answered
            pushed = [each for each in self.pushed if each[0].id == sent.id]
            assert pushed, f"{sent.id} runs: never pushed"
            _, retries, due = pushed[0]
            job = self._job(sent.id, retries, due)
        assert not job.refused, f"{job.id} runs: it was answered 503"
        assert not job.cancelled, f"{job.id} runs after a cancel answered cancelled"
        assert not job.cancelling, f"{job.id} runs again after `cancelling`"
        assert now >= job.due - SLACK, f"{job.id} runs at {now}, due {job.due}"
        assert sent.retries <= job.retries, f"{job.id}: run {sent.retries + 1} of " \
            f"{job.retries + 1}"  # fmt: skip
        run = (self.webs, sent.retries)
        job.sends[run] = job.sends.get(run, 0) + 1
        assert job.sends[run] <= MAX_DELIVERIES, f"{job.id}: deliveries {job.sends}"

    def check(self) -> None:
        """Every status answer agrees with the model."""
        wall = time.time()
        for job in self.jobs.values():
            said = self.d.status(job.id)
            if job.refused:
                assert said is None, f"{job.id} answered 503, then {said}"
                continue
            if said is None:
                continue  # an earlier web's, settled there (or never answered)
            status = said["status"]
            if status in ("failed", "dead", "cancelled"):  # an outcome (checked below)
                job.finished = job.finished or status
            if job.cancelled:
                assert status == "cancelled", f"{job.id} cancelled, then {said}"
            if status == "retrying" and said["next_at"] != job.promised:
                job.promised = said["next_at"]  # a promise: not before it
                job.due = max(job.due, self.clock.now + said["next_at"] - wall)
            elif status == "cancelled":
                assert self._asked_cancel(job), f"{job.id}: {said}, never cancelled"
            elif status == "done":
                assert job.finished == "done", f"{job.id}: {said}, model {job.finished}"

    def _asked_cancel(self, job: Job) -> bool:
        return any(f"cancel {job.id}" == line for line in self.log)

    def finish(self) -> None:
        """Heal the disk, let every job come due and every worker answer ok."""
        self.log.append("finish")
        self.disk.full = self.disk.slow = False
        for done in self.disk.pending:
            done.set(True)
        self.disk.pending = []
        for _ in range(60):
            for _ in range(10):  # answers first: a status is kept 300 s
                if not self.requests_pending():
                    break
                self.turn()
            self.clock.now += 4000
            for link in self.d.links:
                hear(self.d, link, [protocol.HEARTBEAT])
            self.d.tick()
            self.reconnect()
            self.turn()
            for link in self.d.links:
                keys = list(link.jobs)
                for key in keys:
                    self.jobs[link.jobs[key].id].finished = "done"
                if keys:
                    hear(self.d, link, protocol.encode_acks(keys))
            if not self.d.outstanding() and not self.requests_pending():
                break
        for job in self.jobs.values():
            if job.accepted and not job.refused:
                in_doubt = job.asking > 0  # a cancel cut off by a crash
                assert job.finished or job.cancelled or job.cancelling or in_doubt, (
                    f"{job.id} answered 202: neither ran to an outcome nor cancelled"
                )
        assert not self.d.outstanding(), f"{self.d.outstanding()} still owed"
        self.d.drain(0)
        self.d.close()
        journal = Journal(str(self.folder))
        owed = journal.open().jobs
        journal.close()
        assert not owed, f"owed after a clean stop: {[job.id for job in owed]}"

    def requests_pending(self) -> bool:
        return any(not request.ready() for _, _, request in self.requests)


def run_schedule(tmp_path: Path, seed: int, sync: str, steps: int) -> None:
    root = tmp_path / f"{sync}-{seed}"
    root.mkdir()
    model = None
    saved = tail.os, tail._offload, files.offload, slots.MAX_SLOTS
    slots.MAX_SLOTS = 4  # fewer stats per open
    try:
        model = Model(root, seed, sync)
        tail.os, tail._offload = model.disk, model.disk.offload
        files.offload = model.disk.offload  # the keys file's sync too
        for _ in range(steps):
            model.step()
        model.finish()
    except AssertionError as exc:
        schedule = "\n  ".join(model.log if model else [])
        raise AssertionError(f"seed {seed} ({sync}): {exc}\n  {schedule}") from None
    finally:
        tail.os, tail._offload, files.offload, slots.MAX_SLOTS = saved
        shutil.rmtree(root, ignore_errors=True)


# The fast tier: 15 schedules of 50 steps a mode (about 1 s each on an idle
# core); make test-thorough (and CI): 400 more of 120 steps a mode.
SEEDS_FAST, STEPS_FAST = 15, 50
THOROUGH = pytest.mark.thorough


@pytest.mark.parametrize("sync", ["none", "batch"])
def test_lifecycle_schedules_keep_the_readme_promises(tmp_path, sync):
    for seed in range(SEEDS_FAST):
        run_schedule(tmp_path, seed, sync, STEPS_FAST)


@THOROUGH
@pytest.mark.parametrize("chunk", range(8))  # 50 seeds a test: side by side
@pytest.mark.parametrize("sync", ["none", "batch"])
def test_lifecycle_schedules_keep_the_readme_promises_more_seeds(tmp_path, sync,
                                                                 chunk):  # fmt: skip
    start = SEEDS_FAST + 50 * chunk
    for seed in range(start, start + 50):
        run_schedule(tmp_path, seed, sync, 120)
