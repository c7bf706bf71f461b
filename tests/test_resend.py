"""Failed jobs kept and re-sent (issue 33): the dead-letter file keeps a job
whose handler failed with no retry policy (``failed``) beside those given up
on (``dead``); ``pipe.resend``, ``POST /failed/resend`` and ``greenpipe jobs
resend`` send each again at most once, whichever process is asked, however
often, and across a web killed in the middle.

The claims and their interleavings are explored in process (a seeded model);
the CLI, the HTTP routes and a kill -9 during a bulk re-send run real processes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import gevent
import pytest

from greenpipe import protocol
from greenpipe.deadletter import DeadLetters
from greenpipe.errors import Unavailable
from greenpipe.jobs import Envelope, new_job_id
from greenpipe.purge import WAITING, purge
from greenpipe.resend import Resender
from greenpipe.testing import PYTHON, poll_until
from tests.support import handled_ids
from tests.test_core import Clock, ack, hear, make, ready

SEEDS_FAST = range(20)
SEEDS_THOROUGH = range(20, 320)


def _dead(
    path: Path, count: int, name: str = "charge", status: str = "dead"
) -> list[str]:
    """`count` jobs kept in `path`, each with its own id in its body."""
    letters, ids = DeadLetters(str(path)), []
    for n in range(count):
        job = Envelope.new(b"POST", b"/jobs", b"", b"application/json",
                           json.dumps({"n": n, "of": name}).encode(), name=name.encode())  # fmt: skip
        job.named(new_job_id("feedface-"))
        letters.write(job, "lost", "", status)
        ids.append(job.id)
    return ids


# -- the file ------------------------------------------------------------------------


@pytest.mark.inprocess
def test_kept_lists_failed_and_dead_by_name_and_status_without_bodies(tmp_path):
    path = tmp_path / "dead.jsonl"
    dead = _dead(path, 2, "charge")
    failed = _dead(path, 3, "resize", "failed")
    letters = DeadLetters(str(path))
    assert [r["id"] for r in letters.kept()] == dead + failed, "oldest first"
    assert [r["id"] for r in letters.kept(name="resize")] == failed
    assert [r["id"] for r in letters.kept(status="dead")] == dead
    assert all("body" not in r and r["body_bytes"] > 10 for r in letters.kept())
    assert letters.count == 0, "a new DeadLetters counts what it writes"
    assert [r["id"] for r in letters.tail(10)] == (dead + failed)[::-1], (
        "the page lists both, newest first, each with its re-send button"
    )
    assert letters.claim_many([(dead[0], "x-1"), (failed[0], "x-2")]) == {
        dead[0]: "x-1", failed[0]: "x-2"}  # fmt: skip
    assert letters.claim_many([(dead[0], "x-3")]) == {dead[0]: "x-1"}, "first stands"
    assert letters.kept()[0]["resent_as"] == "x-1"
    letters.withdraw(dead[0], "x-1")
    assert letters.resent_as(dead[0]) is None, "struck, and x-3 withdrew itself"


@pytest.mark.inprocess
def test_a_failure_with_no_policy_is_kept_as_failed_and_resent_from_python(
    tmp_path,
):
    """Before: a failing job with no retry policy was kept nowhere; its body
    went at STATUS_TTL or the next restart and nothing could run it again."""
    d = make(Clock(), workers="127.0.0.1:1", dead_letter=tmp_path / "dead.jsonl")
    link = d.links[0]
    ready(d, link)
    job = d.submit(Envelope.new(b"POST", b"/jobs", b"", b"", b'{"sku": 7}',
                                name=b"charge"))  # fmt: skip
    d.flush()
    hear(d, link, protocol.encode_acks([], [protocol.encode_result(
        job.id.encode(), protocol.FAILED, b"RuntimeError: card declined")]))  # fmt: skip
    assert d.status(job.id)["status"] == "failed", "its status is unchanged"
    (kept,) = d.dead_letters.kept()
    assert (kept["id"], kept["status"], kept["name"]) == (job.id, "failed", "charge")
    assert kept["errors"] == ["RuntimeError: card declined"], kept
    assert d.stats()["dead_lettered"] == 0, "a failure is counted as failed, not dead"
    done = d.resender.resend([job.id])
    (new_id,) = done.sent.values()
    assert d.queues.status(new_id) or any(new_id.encode() in x.jobs for x in d.links)
    assert d.resender.resend([job.id]).already == {job.id: new_id}, (
        "a second asks makes none"
    )
    assert d.stats()["redriven"] == 1
    d.close()


# -- the model: claims under interleavings and crashes ------------------------------


class _Web:
    """One web process as the re-send sees it: its takes commit to `journal`
    after a few switches, or never, once it has crashed."""

    def __init__(self, n: int, path: Path, journal: dict, rng: random.Random,
                 refusals: float = 0.05) -> None:  # fmt: skip
        self.n, self.journal, self.rng, self.crashed = n, journal, rng, False
        self.refusals = refusals
        self.resender = Resender(DeadLetters(str(path)), self.take,
                                 lambda: new_job_id(f"{n:08x}-"), -2.0)  # fmt: skip

    def take(self, job: Envelope, job_id: str) -> Envelope:
        for _ in range(self.rng.randrange(4)):
            gevent.sleep(0)  # sleep-ok: a scripted switch of the model
        if self.crashed:
            gevent.sleep(3600)  # sleep-ok: killed, its journal write never happens
        if self.rng.random() < self.refusals:
            raise Unavailable("MAX_PENDING reached")
        self.journal[job_id] = job.body.decode()  # which letter it came from
        return job.named(job_id)


def _one_run(seed: int, tmp_path: Path) -> None:
    rng = random.Random(seed)
    path = tmp_path / f"dead-{seed}.jsonl"
    ids = _dead(path, rng.randrange(5, 260), rng.choice(["a", "b"]))
    ids += _dead(path, rng.randrange(1, 30), "c", "failed")
    journal: dict[str, str] = {}
    webs = [_Web(n, path, journal, rng) for n in range(rng.randrange(1, 4))]
    asks = []
    for web in webs:
        for _ in range(rng.randrange(1, 4)):
            pick = rng.random()
            if pick < 0.4:
                asks.append((web, rng.sample(ids, rng.randrange(1, len(ids))), None))
            elif pick < 0.7:
                asks.append((web, (), rng.choice(["a", "b", "c"])))
            else:
                asks.append((web, (), None))  # every one
    running = [(web, gevent.spawn(web.resender.resend, chosen, name))
               for web, chosen, name in asks]  # fmt: skip
    victim = rng.choice([*webs, None])
    if victim is not None:  # kill -9 after some switches: claims written, takes not
        for _ in range(rng.randrange(1, 30)):
            gevent.sleep(0)  # sleep-ok: a scripted switch of the model
        victim.crashed = True
    alive = [g for web, g in running if web is not victim]
    gevent.joinall(alive, timeout=30, raise_error=True)
    assert all(g.ready() for g in alive), f"seed {seed}: a re-send never finished"
    gevent.killall([g for _, g in running])
    letters = DeadLetters(str(path))
    claims = letters.read()[1]
    for g in alive:
        for dead, job_id in {**g.value.sent, **g.value.already}.items():
            # What it answered stands, or was a concurrent claim then refused
            # and struck (a later ask re-sends: the documented limit).
            first = claims.first(dead)
            assert first == job_id or (dead, job_id) in claims._withdrawn, (
                f"seed {seed}: {dead} answered {job_id}, not {first}"
            )
        for job_id in g.value.sent.values():
            assert journal.get(job_id) is not None, f"seed {seed}: sent, not taken"
    twice = [n for n, count in Counter(journal.values()).items() if count > 1]
    assert not twice, f"seed {seed}: dead letters {twice[:5]} made two jobs"
    # The web restarted: `again` re-sends each claim whose job never ran.
    survivor = _Web(99, path, journal, random.Random(seed), refusals=0.0)
    done = survivor.resender.resend(again=True, known=journal.__contains__)
    assert not done.refused and not done.unknown, f"seed {seed}: {done}"
    standing = {r["id"]: r.get("resent_as") for r in letters.kept()}
    missing = [d for d, j in standing.items() if j not in journal]
    assert not missing, f"seed {seed}: {len(missing)} never re-sent: {missing[:3]}"
    # A job struck by `again` never reached the journal: every job made is a
    # letter's standing one, so no letter ran twice.
    extra = set(journal) - set(standing.values())
    assert not extra, f"seed {seed}: jobs made but not standing: {sorted(extra)[:3]}"
    assert len(journal) == len(standing), f"seed {seed}: one job per letter"


@pytest.mark.inprocess
@pytest.mark.parametrize("seed", SEEDS_FAST)
def test_resends_interleaved_with_a_crash_make_one_job_per_letter(seed, tmp_path):
    """Several processes re-send overlapping choices at once, one is killed
    between its claims and its takes, a take is refused now and then; then
    ``again``: every letter has exactly one job, none two."""
    _one_run(seed, tmp_path)


@pytest.mark.thorough
@pytest.mark.parametrize("seed", SEEDS_THOROUGH)
def test_resends_interleaved_with_a_crash_more_seeds(seed, tmp_path):
    _one_run(seed, tmp_path)


def _resender(letters: DeadLetters, made: list | None = None, **options) -> Resender:
    def take(job: Envelope, job_id: str) -> Envelope:
        if made is not None:
            made.append(job_id)
        return job.named(job_id)

    return Resender(letters, take, lambda: new_job_id("feedface-"), **options)


def _old_id(seconds: float) -> str:
    """A web's job id made `seconds` ago (ids carry their second)."""
    fresh = new_job_id("feedface-")
    head, tail = fresh.split("-")
    return f"{head}-{int(time.time() - seconds):08x}{tail[8:]}"


@pytest.mark.inprocess
def test_again_judges_a_mark_by_its_confirmation_its_age_and_the_store(tmp_path):
    """Review (both readers): ``again`` re-sent jobs that had run, once their
    record expired (STATUS_TTL), and struck a re-send still being submitted.
    Now a submitted re-send is confirmed in the file and never struck; an
    unconfirmed one is struck only between RESEND_AGAIN_AFTER and
    STATUS_TTL, and is said to be in doubt otherwise."""
    path = tmp_path / "dead.jsonl"
    confirmed, young, expired, lost, known = _dead(path, 5)
    letters = DeadLetters(str(path))
    ran = _old_id(400)
    letters.claim_many([(confirmed, ran)])
    letters.confirm_many([(confirmed, ran)])
    letters.claim_many([(young, _old_id(5)), (expired, _old_id(400)),
                        (lost, _old_id(60)), (known, _old_id(60))])  # fmt: skip
    made: list[str] = []
    resender = _resender(letters, made, again_after=30.0, status_ttl=300.0)
    done = resender.resend(again=True, known=lambda job_id: job_id in made + [
        letters.resent_as(known)])  # fmt: skip
    assert set(done.sent) == {lost}, done
    assert set(done.already) == {confirmed, known}, "journaled, or found: left"
    assert "RESEND_AGAIN_AFTER" in done.in_doubt[young], done.in_doubt
    assert "STATUS_TTL" in done.in_doubt[expired], done.in_doubt
    assert letters.read()[1].sent >= {(lost, done.sent[lost])}, "its new one confirmed"
    with pytest.raises(ValueError, match="result store"):
        resender.resend(again=True, known=None)
    # Without again, the same marks are all answered as they stand.
    plain = resender.resend()
    assert not plain.sent and not plain.in_doubt and len(plain.already) == 5


@pytest.mark.inprocess
def test_no_mark_is_written_before_the_barrier(tmp_path):
    """Review: a re-send marked, then waiting READY_TIMEOUT for the barrier,
    was struck by ``again`` elsewhere and both ran. Now nothing is marked
    until the barrier is met: the answer is refused, the file unchanged."""
    path = tmp_path / "dead.jsonl"
    (dead,) = _dead(path, 1)
    before = path.read_bytes()
    made: list[str] = []
    done = _resender(DeadLetters(str(path)), made, ready=lambda: False).resend([dead])
    assert "barrier" in done.refused[dead] and not made, done
    assert path.read_bytes() == before, "nothing marked"


@pytest.mark.inprocess
def test_a_damaged_record_is_refused_unmarked_and_the_rest_are_sent(tmp_path):
    """Review: a record without its request made the whole bulk re-send a 500
    after sending the rest, its mark standing for a job that never existed."""
    path = tmp_path / "dead.jsonl"
    good = _dead(path, 3)
    with path.open("a") as file:
        file.write(json.dumps({"id": "odd-1", "status": "failed", "name": "x"}) + "\n")
        file.write(json.dumps({"id": "odd-2", "method": "GET", "path": "/",
                               "query": "", "content_type": "",
                               "body_base64": "abc"}) + "\n")  # fmt: skip
    made: list[str] = []
    letters = DeadLetters(str(path))
    done = _resender(letters, made).resend()
    assert set(done.sent) == set(good) and len(made) == 3, done
    assert "damaged" in done.refused["odd-1"] and "method" in done.refused["odd-1"]
    assert "damaged" in done.refused["odd-2"], done.refused
    assert letters.resent_as("odd-1") is None, "a damaged record is not marked"


@pytest.mark.inprocess
def test_a_write_cut_short_leaves_no_mark_standing_and_loses_no_record(
    tmp_path, monkeypatch
):
    """Review: a full disk cut a write of marks; the re-send said "nothing
    sent" but left marks standing, and the next failed job's record was glued
    to the cut line and lost."""
    import errno

    from greenpipe import deadletter

    path = tmp_path / "dead.jsonl"
    dead = _dead(path, 10)
    real = os.write
    budget = {"bytes": 300}  # the disk fills 300 bytes into the marks

    def short(fd: int, data) -> int:
        if budget["bytes"] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = real(fd, bytes(data[: budget["bytes"]]))
        budget["bytes"] -= n
        return n

    monkeypatch.setattr(deadletter.os, "write", short)
    letters = DeadLetters(str(path))
    made: list[str] = []
    done = _resender(letters, made).resend()
    assert not made and len(done.refused) == 10, done
    assert "some marks may stand" in done.refused[dead[0]], done.refused[dead[0]]
    monkeypatch.setattr(deadletter.os, "write", real)  # the disk has room again
    (later,) = _dead(path, 1, "charge", "failed")
    assert [r["id"] for r in letters.kept()][-1] == later, "the next record is kept"
    standing = [d for d in dead if letters.resent_as(d)]
    assert standing, "the marks written before the disk filled stand (unconfirmed)"
    again = _resender(letters, made, again_after=-2.0).resend(
        again=True, known=made.__contains__
    )
    assert len(again.sent) == 11 and len(made) == 11, again


@pytest.mark.inprocess
def test_a_bulk_resend_reads_the_file_about_once(tmp_path, monkeypatch):
    """Review: each chunk of 100 marks read the whole file again: 15,000
    letters (65 MB) held the web's loop for up to a second, 88 s in all."""
    from greenpipe import deadletter

    path = tmp_path / "dead.jsonl"
    _dead(path, 1000)
    read = {"bytes": 0}
    real_more = deadletter.Scan.more

    def counting(scan) -> None:
        before = scan.offset
        real_more(scan)
        read["bytes"] += scan.offset - before

    monkeypatch.setattr(deadletter.Scan, "more", counting)
    done = _resender(DeadLetters(str(path))).resend()
    assert len(done.sent) == 1000
    size = path.stat().st_size
    assert read["bytes"] <= size, f"read {read['bytes']} bytes of a {size}-byte file"


# -- real processes -------------------------------------------------------------------


def _jobs(web, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", "greenpipe", "jobs", "--web", f"http://127.0.0.1:{web.port}",
         *args], capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_a_failed_job_is_listed_and_rerun_from_the_cli_once(
    start_worker, start_web, record_dir, tmp_path
):
    """The issue: a no-policy failure re-run from the CLI; a second re-send,
    on another web process, makes no second job."""
    flag = tmp_path / "card-fixed"
    web = start_web([start_worker()], web_processes=2, ops_port=0)
    failing = [web.post("/jobs", {"fail_unless": str(flag), "n": n})[2]["id"]
               for n in range(3)]  # fmt: skip
    fine = web.post("/jobs", {"result": 1})[2]["id"]
    for job_id in failing:
        poll_until(lambda j=job_id: web.get(f"/jobs/{j}")[2].get("status"),
                   "failed".__eq__, 20, f"job {job_id} failed")  # fmt: skip
    listed = _jobs(web, "failed")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("3 kept in "), listed.stdout
    for job_id in failing:
        assert f"failed  {job_id}  /jobs" in listed.stdout, listed.stdout
    assert "does not exist yet" in listed.stdout and fine not in listed.stdout
    flag.touch()
    resent = _jobs(web, "resend", "--name", "/jobs")
    assert resent.returncode == 0, resent.stdout + resent.stderr
    assert "3 re-sent, 0 already" in resent.stdout, resent.stdout
    made = [line.split()[-1] for line in resent.stdout.splitlines()
            if line.startswith("re-sent ")]  # fmt: skip
    again = _jobs(web, "resend", *failing)
    assert "0 re-sent, 3 already" in again.stdout, again.stdout
    assert sorted(line.split()[-3] for line in again.stdout.splitlines()
                  if line.startswith("already")) == sorted(made)  # fmt: skip
    for job_id in made:
        poll_until(lambda j=job_id: web.get(f"/jobs/{j}")[2].get("status"),
                   "done".__eq__, 20, f"the re-sent job {job_id} done")  # fmt: skip
    assert sum(handled_ids(record_dir)[j] for j in made) == 3
    shared = _jobs(web, "list")
    assert shared.returncode == 2 and "421" in shared.stderr, shared.stderr
    assert "OPS_PORT as --web" in shared.stderr, "the backlog is each process's own"
    as_json = json.loads(_jobs(web, "failed", "--json").stdout)
    assert {j["resent_as"] for j in as_json["jobs"]} == set(made)
    assert {j["name"] for j in as_json["jobs"]} == {"/jobs"}, "named as listed"
    assert as_json["file"] == str(tmp_path / "dead-letter.jsonl"), as_json["file"]
    # As a user types it: --web after the command, without http://.
    typed = subprocess.run([PYTHON, "-m", "greenpipe", "jobs", "failed", "--web",
                            f"127.0.0.1:{web.port}"], capture_output=True,
                           text=True, timeout=60)  # fmt: skip
    assert typed.returncode == 0 and "3 kept in" in typed.stdout, typed.stderr
    piped = subprocess.run(
        f"{PYTHON} -m greenpipe jobs --web http://127.0.0.1:{web.port} failed | head -1",
        shell=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "Traceback" not in piped.stderr and piped.stdout.startswith("3 kept")


def test_the_routes_refuse_what_they_cannot_do_saying_what_to_send(
    start_worker, start_web
):
    web = start_web([start_worker()])
    action = {"X-Greenpipe-Action": "resend"}
    code, _, body = web.post("/failed/resend", {"every": True})
    assert code == 403 and "X-Greenpipe-Action" in body["detail"], body
    for sent, words in [({"ids": "abc"}, "list of job ids"),
                        ({"name": "a", "every": True}, "one of"),
                        ({}, "one of"), ({"evry": True}, "'evry'"),
                        ({"again": "yes"}, "true or false")]:  # fmt: skip
        code, _, body = web.post("/failed/resend", sent, headers=action)
        assert code == 400 and words in body["detail"], (sent, body)
    code, _, body = web.get("/failed?status=lost")
    assert code == 400 and "failed, dead" in body["detail"], body
    code, _, body = web.get("/failed?limit=%C2%B2")  # "²".isdigit() is True
    assert code == 400 and "whole number" in body["detail"], body
    code, _, body = web.get("/failed?nme=x")
    assert code == 400 and "'nme'" in body["detail"], "a typo filters nothing"
    code, _, body = web.post("/failed/resend", {"ids": ["nope"]}, headers=action)
    assert code == 200 and body["unknown"] == ["nope"], body
    code, _, body = web.post("/backlog/purge", {"every": True})
    assert code == 403 and "X-Greenpipe-Action: purge" in body["detail"], body
    purge = {"X-Greenpipe-Action": "purge"}
    for sent, words in [({}, "a job name, or every=True"),
                        ({"name": 3}, "a string"), ({"all": True}, "'all'")]:  # fmt: skip
        code, _, body = web.post("/backlog/purge", sent, headers=purge)
        assert code == 400 and words in body["detail"], (sent, body)
    code, _, body = web.get("/backlog?status=done")
    assert code == 400 and "GET /jobs/<id>" in body["detail"], body
    code, _, body = web.post("/backlog/purge", {"name": "x"}, headers=purge)
    assert code == 200 and body["cancelled"] == [], body
    gone = _jobs(web, "resend")
    assert gone.returncode == 2 and "--name NAME or --all" in gone.stderr
    web.proc.signal(signal.SIGTERM)
    assert web.proc.wait_exit(10) == 0
    down = _jobs(web, "failed")
    assert down.returncode == 2 and "cannot reach the web" in down.stderr, down.stderr


def test_again_never_resends_a_job_that_ran_once_its_record_expired(
    start_worker, start_web, record_dir, tmp_path
):
    """The review's blocker: a re-sent job ran; once its record expired
    (STATUS_TTL) ``resend --all --again`` sent it again, a second charge.
    Now a submitted re-send is confirmed in the file and ``again`` leaves it."""
    web = start_web([start_worker()], status_ttl=1, resend_again_after=0.5)
    failed = web.post("/jobs", {"fail_unless": str(tmp_path / "fixed")})[2]["id"]
    poll_until(lambda: web.get(f"/jobs/{failed}")[2].get("status"), "failed".__eq__,
               20, f"job {failed} failed")  # fmt: skip
    (tmp_path / "fixed").touch()
    first = _jobs(web, "resend", "--all")
    (made,) = [line.split()[-1] for line in first.stdout.splitlines()
               if line.startswith("re-sent ")]  # fmt: skip
    poll_until(lambda: web.get(f"/jobs/{made}")[0], (410).__eq__, 20,
               f"the re-sent job {made}'s record expired (410)")  # fmt: skip
    again = _jobs(web, "resend", "--all", "--again")
    assert "0 re-sent, 1 already" in again.stdout, again.stdout + again.stderr
    assert handled_ids(record_dir)[made] == 1 and len(handled_ids(record_dir)) == 2


def test_a_bulk_resend_of_1000_under_kill_9_runs_each_once_more_never_twice(
    start_worker, start_web, record_dir, tmp_path
):
    """The issue's test: 1,000 dead letters re-sent at once, the web killed -9
    in the middle, restarted; ``resend --all`` and then ``--again`` finish the
    job. Every letter ends with one job that ran; no other job was made."""
    path = tmp_path / "dead-letter.jsonl"
    dead = _dead(path, 1000)
    worker = start_worker()
    web = start_web([worker], resend_again_after=1)
    bulk = threading.Thread(target=_jobs, args=(web, "resend", "--all"), daemon=True)
    bulk.start()
    poll_until(lambda: path.read_text().count('"resent"'), lambda n: n >= 300, 30,
               "300 of the re-sends claimed")  # fmt: skip
    web.proc.signal(signal.SIGKILL)
    web.proc.wait_exit(5)
    bulk.join(30)
    web = start_web([worker], resend_again_after=1)
    rest = _jobs(web, "resend", "--all")
    assert rest.returncode == 0, rest.stdout[-2000:] + rest.stderr
    web.wait_settled(60)

    def again() -> str:
        return _jobs(web, "resend", "--all", "--again").stdout.splitlines()[-1]

    # Claims the kill stranded are taken once RESEND_AGAIN_AFTER (1 s) passed.
    poll_until(again, lambda last: last.startswith("0 re-sent, 1000 already"), 30,
               "every letter's job known (strays re-sent with --again)")  # fmt: skip
    web.wait_settled(60)
    kept = DeadLetters(str(path)).kept()
    standing = {r["id"]: r.get("resent_as") for r in kept}
    assert set(standing) == set(dead) and None not in standing.values()
    handled = handled_ids(record_dir)
    never = [d for d, j in standing.items() if handled[j] == 0]
    assert not never, f"{len(never)} letters whose job never ran: {never[:3]}"
    extra = set(handled) - set(standing.values())
    assert not extra, f"{len(extra)} jobs made beside the standing ones: twice"


# -- the backlog: listing and purging by name ---------------------------------------


@pytest.mark.inprocess
def test_the_backlog_lists_by_status_and_name_and_a_purge_cancels_one_name(tmp_path):
    d = make(Clock(), workers="127.0.0.1:1", journal_dir=tmp_path / "journal")
    d.start()
    link = d.links[0]
    ready(d, link, credit=1)

    def push(name: bytes, delay: float = 0.0) -> Envelope:
        job = Envelope.new(b"POST", b"/jobs", b"", b"", b"{}", name=name)
        job.not_before = time.time() + delay if delay else 0.0
        return d.submit(job)

    running = push(b"a")
    queued = [push(b"a"), push(b"b"), push(b"a")]
    later = [push(b"b", 600), push(b"a", 60)]
    d.flush()
    held = d.held()
    assert [(j["id"], j["status"]) for j in held] == [
        *((j.id, "queued") for j in queued),
        (later[1].id, "scheduled"),
        (later[0].id, "scheduled"),
        (running.id, "in_flight"),
    ], "the next to go first: queued in order, then by time, then running"
    assert [j["id"] for j in d.held(name="b")] == [queued[1].id, later[0].id]
    assert [j["id"] for j in d.held("scheduled", "a")] == [later[1].id]
    with pytest.raises(ValueError, match="not one of queued, scheduled"):
        d.held("done")
    done = purge(d.held(name="a"), d.cancel, WAITING, d.status)
    assert sorted(done.cancelled) == sorted([queued[0].id, queued[2].id, later[1].id])
    assert not done.refused and not done.cancelling
    assert [j["name"] for j in d.held()] == ["b", "b", "a"], "b untouched, a's running"
    assert d.status(running.id)["status"] == "in_flight"
    d.close()
    again = make(Clock(), workers="127.0.0.1:1", journal_dir=tmp_path / "journal")
    again.start()
    try:
        names = sorted((j["name"], j["status"]) for j in again.held())
        assert names == [("a", "queued"), ("b", "queued"), ("b", "scheduled")], (
            "a restart replays what was owed: the running a, both b; no purged a"
        )
    finally:
        again.close()


def test_a_purge_by_name_under_load_leaves_the_other_names_untouched(
    start_worker, start_web
):
    """The issue: a purge by name under load leaves the other names untouched.
    web.py names a job by its path: GET / makes "/" jobs, POST /jobs "/jobs"."""
    worker = start_worker(env={"GREENPIPE_SLEEP": "0.02"}, concurrency=2)
    web = start_web([worker])
    delay = {"Greenpipe-Delay": "120"}
    kept = [web.get("/", headers=delay)[2]["id"] for _ in range(50)]
    purged = [web.post("/jobs", {}, headers=delay)[2]["id"] for _ in range(50)]
    stop = threading.Event()
    pushed: list[tuple[str, str]] = []

    def load() -> None:  # both names, while the purge runs
        while not stop.is_set():
            pushed.append(("/", web.get("/")[2]["id"]))
            pushed.append(("/jobs", web.post("/jobs", {})[2]["id"]))

    pusher = threading.Thread(target=load, daemon=True)
    pusher.start()
    poll_until(lambda: len(pushed), lambda n: n >= 100, 20, "100 pushed under load")
    listed = _jobs(web, "list", "--name", "/jobs", "--json")
    assert listed.returncode == 0, listed.stderr
    before = json.loads(listed.stdout)["jobs"]
    assert {j["id"] for j in before} >= set(purged), "the scheduled ones are listed"
    out = _jobs(web, "purge", "--name", "/jobs")
    stop.set()
    pusher.join(10)
    assert out.returncode == 0 and " 0 refused" in out.stdout, out.stdout + out.stderr
    for job_id in purged:
        status = web.get(f"/jobs/{job_id}")[2]["status"]
        assert status == "cancelled", f"scheduled /jobs job {job_id}: {status}"
    for job_id in kept:
        status = web.get(f"/jobs/{job_id}")[2]["status"]
        assert status == "scheduled", f"/ job {job_id} touched: {status}"
    for job_id in [i for name, i in pushed if name == "/"]:
        poll_until(lambda j=job_id: web.get(f"/jobs/{j}")[2]["status"],
                   "done".__eq__, 30, f"/ job {job_id} done")  # fmt: skip
    for job in before:  # waiting when listed: cancelled, or it went out first
        poll_until(lambda j=job["id"]: web.get(f"/jobs/{j}")[2]["status"],
                   lambda s: s in ("cancelled", "done"), 30,
                   f"/jobs job {job['id']} cancelled or done")  # fmt: skip


# -- the second careful reader's review ---------------------------------------------


def _push(d, name: bytes, delay: float = 0.0) -> Envelope:
    job = Envelope.new(b"POST", b"/jobs", b"", b"", b"{}", name=name)
    job.not_before = time.time() + delay if delay else 0.0
    return d.submit(job)


@pytest.mark.inprocess
def test_a_purge_leaves_a_job_that_started_during_it_running(tmp_path):
    """The second review: a job queued in the purge's snapshot and sent to a
    worker while the purge's first cancels waited for their records (an ack
    freed credit) was interrupted there, though in_flight was not asked."""
    d = make(Clock(), workers="127.0.0.1:1", journal_dir=tmp_path / "journal")
    d.start()
    link = d.links[0]
    ready(d, link, credit=1)
    running = _push(d, b"a")
    for _ in range(60):
        _push(d, b"a")
    d.flush()
    assert link.jobs.get(running.key) is running
    snapshot = d.held(name="a")
    assert sum(j["status"] == "queued" for j in snapshot) == 60

    def worker_acks():  # the running job finishes while the purge runs
        gevent.sleep(0)  # sleep-ok: lets the purge start first
        ack(d, link, running.id)

    acker = gevent.spawn(worker_acks)
    done = purge(snapshot, d.cancel, WAITING, d.status)  # as pipe.purge(name="a")
    acker.join()
    cancels = [m for m in link.sent_messages if m[0] == protocol.CANCEL]
    d.close()
    assert not done.cancelling and not cancels, (
        f"purge without in_flight interrupted {done.cancelling} on the worker"
    )
    assert len(done.started) == 1 and len(done.cancelled) == 59, done


@pytest.mark.inprocess
def test_a_job_named_other_keeps_its_own_figures():
    """The second review: an announced job named "other" shared its label with
    the names past OWN_LABELS. They go under job="" now (no name is empty)."""
    from greenpipe import metrics
    from greenpipe.books import Books, take
    from greenpipe.jobs import Envelope, Status

    books = Books()

    def job(name):
        j = Envelope.new(b"", b"", b"", b"", b"", name=name)
        j.accepted_at = 0.0
        return j

    books.settled([job(b"other")], [], 0, "w", 0.004)  # the real "other": 1 ok
    strangers = [job(b"u%d" % n) for n in range(metrics.OWN_LABELS + 3)]
    books.settled([], [(j, Status.FAILED, b"E") for j in strangers], 0, "w", 2.0)
    snapshot = take("web", books, [], 0.0)
    worker = type("W", (), {"report": {"serves": {"names": ["other"]}}})()
    snapshot = snapshot.__class__(
        **{
            **{f: getattr(snapshot, f) for f in snapshot.__dataclass_fields__},
            "workers": [worker],
        }
    )
    fams = {f.name: f for f in metrics.Collector(lambda: snapshot)._by_name(snapshot)}
    failed = {
        s.labels["job"]: s.value for s in fams["greenpipe_jobs_failed_by_name"].samples
    }
    count = {
        s.labels["job"]: s.value
        for s in fams["greenpipe_job_ack_by_name_seconds"].samples
        if s.name.endswith("_count")
    }
    assert failed["other"] == 0 and count["other"] == 1, (failed, count)
    assert failed[""] == 3, "the three past OWN_LABELS, grouped"


@pytest.mark.inprocess
def test_two_resends_across_a_move_aside_make_one_job(tmp_path):
    """The second review: the file moved aside between two processes' reads
    and their marks; each read on from its old offset in the new, shorter
    file, read no mark, took its own as first: two jobs. A replaced file is
    read from its start now, and a mark not read back refuses."""
    import os

    from greenpipe.deadletter import DeadLetters
    from greenpipe.jobs import new_job_id
    from greenpipe.resend import Resender

    path = str(tmp_path / "dead.jsonl")
    letter = Envelope.new(b"POST", b"/jobs", b"", b"", b"{}", name=b"charge")
    letter.named(new_job_id("web-"))
    DeadLetters(path).write(letter, "boom", "w", "failed")
    arrived, taken = [], []

    def ready(who):
        def check():
            arrived.append(who)
            while len(arrived) < 2:  # both have read the file
                gevent.sleep(
                    0.001
                )  # sleep-ok: a polling wait in a scripted interleaving
            if who == "A":
                os.rename(path, path + ".aside")  # the operator moves it aside
            while not os.path.exists(path + ".aside"):
                gevent.sleep(
                    0.001
                )  # sleep-ok: a polling wait in a scripted interleaving
            return True

        return check

    def resender(who):
        return Resender(
            DeadLetters(path),
            lambda job, i: taken.append((who, i)),
            lambda: new_job_id(who + "-"),
            ready=ready(who),
        )

    a = gevent.spawn(resender("A").resend, [letter.id])
    b = gevent.spawn(resender("B").resend, [letter.id])
    gevent.joinall([a, b], raise_error=True)
    assert len(taken) == 1, f"one dead letter, {len(taken)} jobs: {taken}"
