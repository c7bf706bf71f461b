"""The core without processes: the dispatcher's state machine, message by message.

A `ScriptedLink` opens no socket and records what the dispatcher sends; the
test hands in what a worker would say (READY, ACKS, BYE, monitor events) and
moves a fake clock, as honcho tests its manager with fake processes. The last
tests run a real `Dispatcher` and a real `Worker` in this one process over
tcp://127.0.0.1 (the OS picks the port).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import gevent
import pytest
import zmq.green as zmq

from greenpipe import protocol
from greenpipe.config import WorkerSettings, load_web
from greenpipe.dispatcher import Dispatcher
from greenpipe.errors import Unavailable
from greenpipe.jobs import Envelope, Job, Status
from greenpipe.link import CONNECTING, FULL, LEAVING, LOST, READY, Link
from greenpipe.pushlink import PushLink
from greenpipe.worker import Worker

pytestmark = pytest.mark.inprocess  # make test-fast


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ScriptedLink(Link):
    """A Link without sockets: `sent` is every message the dispatcher sent."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sent_messages: list[list[bytes]] = []
        self.accepting = True  # False: libzmq says "full" (zmq.Again)
        self.resets = 0
        self.inbox: list[list[bytes]] = []  # read by receive_queued()

    def open(self) -> None:
        self.opened = True  # no socket: what a test hands in stands for it

    def close(self) -> None:
        self.opened = False

    def reset(self) -> None:
        self.resets += 1

    def send(self, frames) -> bool:
        if not self.accepting:
            return False
        self.sent_messages.append([bytes(f) for f in frames])
        return True

    def receive_queued(self, now: float) -> list:
        self._unread.extend(self.inbox)  # as if still in the socket: read last
        self.inbox = []
        return super().receive_queued(now)

    def kinds(self) -> list[bytes]:
        return [m[0] for m in self.sent_messages]

    def job_ids(self) -> list[str]:
        ids = []
        for message in self.sent_messages:
            if message[0] == protocol.JOBS:
                ids += [job.id for job in protocol.decode_jobs(message[1])]
        return ids


class ScriptedPushLink(PushLink, ScriptedLink):
    """A plain PULL link without sockets (PushLink's rules, ScriptedLink's I/O)."""


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(clock: Clock, workers: str = "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3", **flags):
    argv = ["--workers", workers, "--dead-letter", "/dev/null", "--journal-dir", "off"]
    for name, value in flags.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    settings = load_web(argv, {})

    def factory(index, endpoint, inbox):
        kind = ScriptedLink if endpoint.reliable else ScriptedPushLink
        return kind(index, endpoint, None, inbox)

    return Dispatcher(settings, name="test web", clock=clock, link_factory=factory)


def hear(d: Dispatcher, link: Link, frames: list[bytes]) -> None:
    """What a link's reader read: the link applies it, the dispatcher reacts."""
    for event in link.handle(frames, d.now()):
        d._react(link, event)


def notice(d: Dispatcher, link: Link, event: int) -> None:
    """A monitor event of the link's socket, applied as the dispatcher would."""
    for happened in link.on_monitor(event, d.now()):
        d._react(link, happened)


def ready(d: Dispatcher, link: Link, credit: int = 10) -> None:
    notice(d, link, zmq.EVENT_HANDSHAKE_SUCCEEDED)
    hear(d, link, protocol.encode_ready(credit, 1 << 24, f"worker {link.index}"))


def ack(d: Dispatcher, link: Link, *ids: str) -> None:
    hear(d, link, protocol.encode_acks([i.encode() for i in ids]))


def submit(d: Dispatcher, count: int = 1, reply: bool = False) -> list:
    return [d.submit(Envelope.new(b"POST", b"/jobs", b"", b"", b"{}", wait=reply))
            for _ in range(count)]  # fmt: skip


def test_handshake_says_hello_and_ready_joins_the_rotation(clock):
    d = make(clock)
    link = d.links[0]
    assert link.state == CONNECTING and not d.barrier_met
    notice(d, link, zmq.EVENT_HANDSHAKE_SUCCEEDED)
    assert link.kinds() == [protocol.HELLO] and link.connected
    hear(d, link, protocol.encode_ready(7, 1 << 24, "w0"))
    assert link.state == READY and link.credit == 7 and link.ever_ready
    assert not d.barrier_met, "two of three workers have not said READY"
    ready(d, d.links[1])
    ready(d, d.links[2])
    assert d.barrier_met


def test_round_robin_is_exact_from_the_first_job(clock):
    d = make(clock)
    for link in d.links:
        ready(d, link)
    jobs = submit(d, 9)
    d.flush()
    for index, link in enumerate(d.links):
        assert link.job_ids() == [job.id for job in jobs[index::3]]
        assert len(link.jobs) == 3


def test_credit_routes_around_a_full_worker(clock):
    d = make(clock)
    ready(d, d.links[0], credit=1)
    ready(d, d.links[1], credit=10)
    ready(d, d.links[2], credit=10)
    submit(d, 7)
    d.flush()
    assert [len(link.jobs) for link in d.links] == [1, 3, 3]
    assert d.links[0].reported_state == FULL


def test_acks_settle_jobs_and_stray_acks_are_counted(clock):
    d = make(clock, workers="127.0.0.1:1")
    link = d.links[0]
    ready(d, link)
    first, second = submit(d, 2)
    d.flush()
    ack(d, link, first.id, "unknown-1")
    assert list(link.jobs) == [second.key]
    assert (d.books.acked, d.books.stray_acks, link.acked) == (1, 1, 1)


def test_a_failure_result_reaches_whoever_waits(clock):
    d = make(clock, workers="127.0.0.1:1")
    link = d.links[0]
    ready(d, link)
    (job,) = submit(d, reply=True)
    d.flush()
    result = protocol.encode_result(job.key, protocol.FAILED, b"RuntimeError: x")
    hear(d, link, protocol.encode_acks([], [result]))
    outcome = d.outcome(job, 0)
    assert outcome.status is Status.FAILED and outcome.payload == b"RuntimeError: x"
    assert d.books.failed == 1 and link.failed == 1


def test_silence_loses_a_worker_and_its_jobs_go_to_the_others(clock):
    d = make(clock)
    for link in d.links:
        ready(d, link)
    submit(d, 6)
    d.flush()
    clock.now += d.settings.heartbeat_timeout + 0.1
    for link in d.links[1:]:
        hear(d, link, [protocol.HEARTBEAT])
    d.tick()
    lost = d.links[0]
    assert lost.state == LOST and not lost.jobs and lost.resets == 1
    assert d.books.resent == 2 and lost.resent == 2
    d.flush()  # re-sent jobs are suspects: they travel one per worker
    held = [job.attempt for link in d.links[1:] for job in link.jobs.values()]
    assert sorted(held) == [1, 1, 1, 1, 2, 2]
    assert [link.suspects for link in d.links[1:]] == [1, 1]


def test_a_second_suspect_waits_for_a_worker_without_one(clock):
    d = make(clock, workers="127.0.0.1:1,127.0.0.1:2")
    a, b = d.links
    ready(d, a)
    ready(d, b)
    submit(d, 4)
    d.flush()
    d._lose(a, "test")
    d.flush()
    assert b.suspects == 1 and len(d._retry) == 1, "one suspect per worker"
    suspect = next(job for job in b.jobs.values() if job.attempt == 2)
    ack(d, b, suspect.id)
    d.flush()
    assert b.suspects == 1 and not d._retry


def test_a_job_lost_max_deliveries_times_is_dead_lettered(clock):
    d = make(clock, workers="127.0.0.1:1", max_deliveries=2)
    link = d.links[0]
    ready(d, link)
    (job,) = submit(d, reply=True)
    for _ in range(2):
        d.flush()
        d._lose(link, "test")
        ready(d, link)
    assert d.dead_letters.count == 1 and not link.jobs and not d._retry
    assert d.outcome(job, 0).status is Status.DEAD


def test_bye_stops_new_jobs_and_close_after_it_is_a_graceful_leave(clock):
    d = make(clock, workers="127.0.0.1:1,127.0.0.1:2")
    a, b = d.links
    ready(d, a)
    ready(d, b)
    submit(d, 2)
    d.flush()
    hear(d, a, protocol.encode_bye("stopping"))
    assert a.state == LEAVING and a.kinds()[-1] == protocol.DONE
    submit(d, 2)
    d.flush()
    assert len(a.jobs) == 1 and len(b.jobs) == 3, "a leaving worker takes nothing new"
    a.inbox.append(protocol.encode_acks([next(iter(a.jobs))]))
    notice(d, a, zmq.EVENT_DISCONNECTED)  # reads the ack, then closes
    assert a.state == CONNECTING and d.books.resent == 0 and d.books.acked == 1


def test_what_the_readers_read_is_applied_in_order_by_the_dispatcher(clock):
    """A reader keeps what it read in its link and names the link in the inbox;
    `Dispatcher.hear` applies it in order. After a loss the rest belongs to the
    closed connection: an ack read after the close still counts, a handshake of
    the old socket is dropped."""
    d = make(clock, workers="127.0.0.1:1,127.0.0.1:2")
    a, b = d.links
    ready(d, a)
    ready(d, b)
    submit(d, 4)
    d.flush()
    first, second = list(a.jobs)
    a._unread.extend([protocol.encode_acks([first]),
                      (zmq.EVENT_DISCONNECTED, 0),
                      protocol.encode_acks([second]),
                      (zmq.EVENT_HANDSHAKE_SUCCEEDED, 0)])  # fmt: skip
    d.inbox.post(a)
    assert d._wake.is_set(), "posting a link wakes the dispatcher greenlet"
    assert len(a.jobs) == 2, "nothing is applied before the dispatcher hears it"
    d.hear()
    assert d.books.acked == 2 and d.books.resent == 0 and a.state == LOST
    assert not a._unread and a.kinds().count(protocol.HELLO) == 1, "old socket's"
    assert d.inbox.take() == []


def test_bye_before_ready_is_a_refusal(clock):
    d = make(clock, workers="127.0.0.1:1")
    link = d.links[0]
    hear(d, link, protocol.encode_bye("protocol 9, not 1"))
    assert link.state == CONNECTING


def test_a_send_that_does_not_go_takes_the_jobs_back_in_order(clock):
    d = make(clock, workers="127.0.0.1:1,127.0.0.1:2")
    a, b = d.links
    ready(d, a)
    ready(d, b)
    a.accepting = False
    jobs = submit(d, 2)
    d.flush()
    assert a.state == LOST and not a.jobs and d._fresh[0] is jobs[0]
    d.flush()
    assert [job.id for job in b.jobs.values()] == [jobs[1].id, jobs[0].id]
    assert all(job.attempt == 1 for job in jobs), "never sent: not a re-send"


def test_overdue_ack_loses_the_worker(clock, caplog):
    d = make(clock, workers="127.0.0.1:1", job_timeout=1, heartbeat_timeout=3)
    link = d.links[0]
    ready(d, link)
    submit(d)
    d.flush()
    clock.now += 2 * 1 + 3 + 0.5  # past 2 x JOB_TIMEOUT + HEARTBEAT_TIMEOUT
    hear(d, link, [protocol.HEARTBEAT])
    d.tick()
    assert link.state == LOST and d.books.resent == 1
    assert "not acknowledged within 5 s" in caplog.text


def test_the_backstop_follows_the_limit_the_worker_announces_per_job(clock, caplog):
    """Issue 30: a handler's timeout=8 over JOB_TIMEOUT=1 lost its worker at 5 s."""
    d = make(clock, workers="127.0.0.1:1", job_timeout=1, heartbeat_timeout=3)
    link = d.links[0]
    notice(d, link, zmq.EVENT_HANDSHAKE_SUCCEEDED)
    hear(d, link, protocol.encode_ready(10, 1 << 24, "w", limits={"slow": 8}))
    assert link.limits == {b"slow": 8.0}
    d.submit(Envelope.new(b"POST", b"", b"", b"", b"{}", name=b"slow"))
    d.flush()
    clock.now += 2 * 8 + 3 - 0.5  # past JOB_TIMEOUT's backstop, within its own
    hear(d, link, [protocol.HEARTBEAT])
    d.tick()
    assert link.state == READY and d.books.resent == 0, caplog.text
    plain = submit(d)[0]
    d.flush()
    clock.now += 2 * 1 + 3 + 0.5  # the plain job: JOB_TIMEOUT's backstop
    hear(d, link, [protocol.HEARTBEAT])
    d.tick()
    assert link.state == LOST, "the slow job is overdue now, and the plain one"
    assert "not acknowledged within 19 s" in caplog.text, plain.id


def test_barrier_holds_submit_then_503_names_the_missing(clock):
    d = make(clock, ready_timeout=0.01)
    ready(d, d.links[0])
    with pytest.raises(Unavailable, match=r"1 of 3 workers READY .*127.0.0.1:2"):
        submit(d)
    assert d.books.rejected == 1


def test_max_pending_counts_only_jobs_beyond_credit(clock):
    d = make(clock, workers="127.0.0.1:1", max_pending=2)
    ready(d, d.links[0], credit=3)
    submit(d, 5)  # 3 fit the credit, 2 wait
    with pytest.raises(Unavailable, match="MAX_PENDING=2"):
        submit(d)


def test_plain_pull_link_joins_on_handshake_and_resolves_unacknowledged(clock):
    d = make(clock, workers="push+tcp://127.0.0.1:9")
    link = d.links[0]
    notice(d, link, zmq.EVENT_HANDSHAKE_SUCCEEDED)
    assert link.state == READY and d.barrier_met and link.kinds() == []
    (job,) = submit(d, reply=True)
    d.flush()
    assert link.sent_messages == [[job.key, b"{}"]] and not link.jobs
    assert d.outcome(job, 0).status is Status.UNACKNOWLEDGED
    assert d.stats()["pushed"] == 1
    notice(d, link, zmq.EVENT_DISCONNECTED)
    assert link.state == LOST


def test_a_large_batch_is_split_to_fit_the_workers_frame_limit(clock):
    d = make(clock, workers="127.0.0.1:1")
    link = d.links[0]
    notice(d, link, zmq.EVENT_HANDSHAKE_SUCCEEDED)
    hear(d, link, protocol.encode_ready(100, 400, "small frames"))
    jobs = [d.submit(Envelope.new(b"POST", b"/", b"", b"", b"x" * 100))
            for _ in range(10)]  # fmt: skip
    d.flush()
    frames = [m for m in link.sent_messages if m[0] == protocol.JOBS]
    assert len(frames) > 1 and all(len(m[1]) <= 400 for m in frames)
    assert link.job_ids() == [job.id for job in jobs]


# -- a real Dispatcher and a real Worker in this process ------------------------


@pytest.fixture
def context() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def _worker(context, handler, **options) -> tuple[Worker, gevent.Greenlet]:
    settings = WorkerSettings(port=0, **options)
    worker = Worker(settings, handler, context)
    worker.bind()
    return worker, gevent.spawn(worker.serve)


def test_in_process_dispatcher_and_workers_round_robin_and_ack(context):
    seen: dict[str, list[str]] = {}

    def handler(job: Job) -> None:
        seen.setdefault(job.worker, []).append(job.id)

    workers = [_worker(context, handler) for _ in range(2)]
    addresses = ",".join(w.endpoint for w, _ in workers)
    settings = load_web(["--workers", addresses, "--dead-letter", "/dev/null",
                         "--journal-dir", "off"], {})  # fmt: skip
    d = Dispatcher(settings, context, "in-process web")
    d.start()
    try:
        assert d.wait_barrier(5), "both in-process workers READY within 5 s"
        jobs = submit(d, 10)
        with gevent.Timeout(5, AssertionError("10 jobs acknowledged within 5 s")):
            while d.books.acked < 10:
                gevent.sleep(0.01)  # sleep-ok: polling a counter under a Timeout
        by_worker = [seen[w.name] for w, _ in workers]
        assert by_worker == [[j.id for j in jobs[0::2]], [j.id for j in jobs[1::2]]]
    finally:
        for worker, _ in workers:
            worker.stop()
        gevent.joinall([g for _, g in workers], timeout=5)
        d.close()


def test_in_process_worker_stop_is_exact_no_resend(context):
    def handler(job: Job) -> None:
        gevent.sleep(0.05)  # sleep-ok: the handler's work, not a wait

    worker, greenlet = _worker(context, handler, drain_timeout=3.0)
    settings = load_web(
        [
            "--workers",
            worker.endpoint,
            "--dead-letter",
            "/dev/null",
            "--journal-dir",
            "off",
        ],
        {},
    )
    d = Dispatcher(settings, context, "in-process web")
    d.start()
    try:
        assert d.wait_barrier(5), "the in-process worker READY within 5 s"
        submit(d, 20)
        with gevent.Timeout(5, AssertionError("20 jobs in flight within 5 s")):
            while d.stats()["in_flight"] < 20:
                gevent.sleep(0.01)  # sleep-ok: polling a counter under a Timeout
        worker.stop()
        greenlet.join(timeout=5)
        assert greenlet.dead, "the worker drained and returned within 5 s"
        with gevent.Timeout(
            5, AssertionError(f"20 acks read within 5 s: {d.books.acked}")
        ):
            while d.books.acked < 20:
                gevent.sleep(0.01)  # sleep-ok: polling a counter under a Timeout
        assert (d.books.resent, worker.handled) == (0, 20)
    finally:
        d.close()


def test_finished_jobs_are_bounded_by_count_and_age():
    from greenpipe.finished import FinishedJobs

    clock = Clock()
    finished = FinishedJobs(keep=100, ttl=10, clock=clock)
    for i in range(1000):
        finished.add(f"j-{i}", Status.OK, "w", 1, b"")
    assert len(finished) == 100 and finished.get("j-899") is None
    assert finished.get("j-999")["status"] == "done"
    clock.now += 11
    finished.add("late", Status.FAILED, "w", 2, b"RuntimeError: x")
    assert finished.get("j-999") is None, "older than STATUS_TTL: forgotten"
    assert finished.get("late")["error"] == "RuntimeError: x"


def _dead_lines(path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def test_a_stop_with_jobs_still_queued_dead_letters_each_once(clock, tmp_path):
    """Defect 1 of issue 18: without a journal, queued jobs were written twice."""
    d = make(clock)
    d.dead_letters.path = str(tmp_path / "dead.jsonl")
    for link in d.links:
        ready(d, link, credit=1)
    jobs = submit(d, 10)
    d.flush()  # 3 in flight (credit 1 each), 7 still queued
    assert d.drain(0) == 10
    ids = _dead_lines(tmp_path / "dead.jsonl")
    assert sorted(ids) == sorted(job.id for job in jobs), "each job exactly once"
    assert d.dead_letters.count == 10


def test_a_stop_with_a_journal_keeps_queued_jobs_owed_not_dead(clock, tmp_path):
    """Defect 1 of issue 18: with a journal, jobs stay owed and are not dead-lettered."""
    d = make(clock, journal_dir=tmp_path / "journal")
    d.dead_letters.path = str(tmp_path / "dead.jsonl")
    d.start()
    try:
        for link in d.links:
            ready(d, link, credit=1)
        jobs = [gevent.spawn(d.submit, Envelope.new(b"POST", b"/", b"", b"", b"{}"))
                for _ in range(10)]  # fmt: skip
        gevent.sleep(
            0
        )  # sleep-ok: an idle yield, not a wait (the requests park on their group: one write)
        d.flush()
        gevent.joinall(jobs, timeout=5, raise_error=True)
        d.flush()
        assert d.drain(0) == 10
        assert not (tmp_path / "dead.jsonl").exists(), "owed, not dead-lettered"
    finally:
        d.close()
    again = make(clock, journal_dir=tmp_path / "journal")
    again.start()
    try:
        assert again.books.replayed == 10
    finally:
        again.close()


def test_a_replayed_job_is_sent_as_its_next_attempt_round_robin(clock, tmp_path):
    """Issue 25, item 1: a job sent before the web stopped is replayed as
    attempt 2 (its SENT record), and replayed jobs go round-robin from the
    barrier on, not all to the worker that said READY first."""
    journal = tmp_path / "journal"
    d = make(clock, workers="127.0.0.1:1,127.0.0.1:2", journal_dir=journal)
    d.start()
    try:
        ready(d, d.links[0], credit=1)
        ready(d, d.links[1], credit=1)
        jobs = [gevent.spawn(d.submit, Envelope.new(b"POST", b"/", b"", b"", b"{}"))
                for _ in range(4)]  # fmt: skip
        gevent.sleep(
            0
        )  # sleep-ok: an idle yield, not a wait (the requests park on their group: one write)
        d.flush()
        gevent.joinall(jobs, timeout=5, raise_error=True)
        d.flush()  # two go out (credit 1 each), two wait
        sent = {job_id for link in d.links for job_id in link.job_ids()}
        assert len(sent) == 2
        d.tick()  # writes the SENT records (with the ACK records, each heartbeat)
    finally:
        d.close()  # as a kill would leave it: nothing acknowledged
    again = make(clock, workers="127.0.0.1:1,127.0.0.1:2", journal_dir=journal)
    again.start()
    try:
        ready(again, again.links[0], credit=10)
        again.flush()
        assert not again.links[0].job_ids(), "nothing sent before the barrier"
        ready(again, again.links[1], credit=10)
        again.flush()
        got = [protocol.decode_jobs(m[1]) for link in again.links
               for m in link.sent_messages if m[0] == protocol.JOBS]  # fmt: skip
        attempts = {job.id: job.attempt for batch in got for job in batch}
        assert len(attempts) == 4
        assert {i: attempts[i] for i in sent} == dict.fromkeys(sent, 2)
        assert sorted(attempts.values()) == [1, 1, 2, 2]
        assert [len(link.job_ids()) for link in again.links] == [2, 2], "round-robin"
    finally:
        again.close()


def test_jobs_given_back_by_a_worker_that_said_bye_are_not_suspects(clock):
    """Issue 25, item 6: after a graceful leave, the jobs a worker still held
    go out together as their next attempt, not one per worker as suspects."""
    d = make(clock)
    for link in d.links:
        ready(d, link)
    submit(d, 6)
    d.flush()
    leaving = d.links[0]
    hear(d, leaving, protocol.encode_bye("stopping"))
    notice(d, leaving, zmq.EVENT_DISCONNECTED)  # closed before acking its 2
    assert not leaving.jobs and not d._retry, "given back, not queued as suspects"
    d.flush()
    held = [job for link in d.links[1:] for job in link.jobs.values()]
    assert sorted(job.attempt for job in held) == [1, 1, 1, 1, 2, 2]
    assert all(not job.suspect for job in held)
    assert [link.suspects for link in d.links[1:]] == [0, 0]
