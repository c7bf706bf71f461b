"""Routing by job name and queue against a model (issue 32): seeded random fleets.

A real `Dispatcher` with scripted links (tests/test_core.py) feeds fleets of
1-5 workers, each announcing a random set of names, a default handler or
not, the queues it listens on, and a random credit. Seeded schedules push
jobs of random names to random queues, ack,
lose workers (a disconnect: their jobs come back as suspects) and bring them
back. After every flush the model checks: every job went to a link that
runs its name from its queue; no job waits while such a link has credit for
it (no head-of-line blocking across names or queues; a suspect also needs
a link holding no other suspect); first sends of a name in a queue keep
their order; a push nobody runs is refused at once, naming the name or the
queue; nothing is lost. With credit to spare, each name's jobs in a queue go
round-robin over the links that run them, exactly (over all links at once in
a uniform fleet, as without routing).
A failing seed prints its fleet and schedule.
"""

from __future__ import annotations

import json
import random

import pytest
import zmq.green as zmq

from greenpipe import protocol
from greenpipe.config import parse_workers
from greenpipe.dispatcher import Dispatcher
from greenpipe.errors import Unavailable
from greenpipe.jobs import DEFAULT_QUEUE, Envelope
from greenpipe.link import LOST, Link
from greenpipe.protocol import DEFAULT_QUEUES, Serves
from tests.test_core import Clock, ack, hear, make, notice

pytestmark = pytest.mark.inprocess  # make test-fast

NAMES = [b"a", b"b", b"c", b"d"]  # what workers may announce
PUSHED = [*NAMES, b"e"]  # what clients push: "e" only a default handler runs
QUEUES = [DEFAULT_QUEUE, b"q1", b"q2"]  # what workers listen on, clients push to
EVERY_QUEUE = frozenset(QUEUES)


def fleet(rng: random.Random) -> list[Serves]:
    serves = []
    for _ in range(rng.randint(1, 5)):
        names = frozenset(n for n in NAMES if rng.random() < 0.5)
        queues = DEFAULT_QUEUES
        if rng.random() < 0.4:  # QUEUES of its own: one to all three
            queues = frozenset(rng.sample(QUEUES, rng.randint(1, len(QUEUES))))
        serves.append(Serves(names, rng.random() < 0.2, queues))
    return serves


def start(serves: list[Serves], credits: list[int]) -> Dispatcher:
    workers = ",".join(f"127.0.0.1:{i + 1}" for i in range(len(serves)))
    d = make(Clock(), workers=workers, max_pending=100_000)
    for link, announced, credit in zip(d.links, serves, credits, strict=True):
        join(d, link, announced, credit)
    assert d.barrier_met
    return d


def join(d: Dispatcher, link: Link, serves: Serves, credit: int) -> None:
    notice(d, link, zmq.EVENT_HANDSHAKE_SUCCEEDED)
    frames = protocol.encode_ready(credit, 1 << 24, f"w{link.index}", serves=serves)
    hear(d, link, frames)


def push(d: Dispatcher, name: bytes, queue: bytes = DEFAULT_QUEUE) -> Envelope:
    job = Envelope.new(b"", b"", b"", b"", b"{}", name=name)
    job.queue = queue
    return d.submit(job)


def runnable(d: Dispatcher, name: bytes, queue: bytes = DEFAULT_QUEUE) -> bool:
    """The model's rule: some worker ever READY listens on the queue and
    announced the name, or has a default handler."""
    return any(link.serves.runs(name, queue) for link in d.links if link.ever_ready)


def waiting(d: Dispatcher) -> list[tuple[Envelope, bool]]:
    """Every job the web holds for a worker, and whether it is a suspect."""
    queues = d.queues
    held = [(job, True) for job in queues.retry]
    held += [(job, False) for job in queues.fresh]
    for (suspect, _, _), lane in queues.lanes.items():
        held += [(job, suspect) for job in lane]
    return held


def check(d: Dispatcher, story: list[str]) -> None:
    where = "\n  ".join(story[-30:])
    for link in d.links:
        for job in link.jobs.values():
            assert link.serves.runs(job.name, job.queue), (
                f"job {job.name!r} of {job.queue!r} on {link.name}, which runs "
                f"{link.serves}:\n  {where}"
            )
    dropped, gone = d.fleet.routes.dropped, d.fleet.routes.dropped_queues
    for job, suspect in waiting(d):
        assert job.name not in dropped and job.queue not in gone, (
            f"job {job.name!r} of {job.queue!r} waits, though no worker runs that "
            f"name or queue any more (dropped: {sorted(dropped)}, {sorted(gone)}): "
            f"it waits for ever:\n  {where}"
        )
        for link in d.links:
            free = link.can_take() and not (suspect and link.suspects)
            assert not (free and link.serves.runs(job.name, job.queue)), (
                f"job {job.name!r} of {job.queue!r} (suspect {suspect}) waits "
                f"while {link.name} "
                f"runs it and has credit ({len(link.jobs)} of {link.credit}):"
                f"\n  {where}"
            )


def sent_since(link: Link, seen: dict[Link, int]) -> list[str]:
    """Ids of the jobs sent on `link` since the last call, in order."""
    messages = link.sent_messages  # type: ignore[attr-defined]
    ids = []
    for message in messages[seen.get(link, 0) :]:
        if message[0] == protocol.JOBS:
            ids += [job.id for job in protocol.decode_jobs(message[1])]
    seen[link] = len(messages)
    return ids


@pytest.mark.parametrize("redeploy", [False, True], ids=["same", "redeployed"])
@pytest.mark.parametrize("seed", range(40))
def test_random_fleets_route_every_job_to_a_worker_that_runs_it(
    seed: int, redeploy: bool
) -> None:
    """With `redeploy`, a worker that comes back may run other names (a new
    registry deployed): jobs of names it dropped wait for a worker that runs
    them, and names it added go to it from its READY on."""
    rng = random.Random(seed)
    serves = fleet(rng)
    credits = [rng.randint(1, 4) for _ in serves]
    story = [f"seed {seed}: fleet {serves}, credits {credits}"]
    d = start(serves, credits)
    accepted: dict[str, Envelope] = {}
    order: dict[str, int] = {}  # job id -> its place in the push order
    # (name, queue) -> push order of first sends
    first_sent: dict[tuple[bytes, bytes], list[int]] = {}
    seen: dict[Link, int] = {}
    done = 0
    for _step in range(150):
        roll = rng.random()
        if roll < 0.45:
            name, queue = rng.choice(PUSHED), rng.choice(QUEUES)
            said = f"{name.decode()!r}|{queue.decode()!r}"  # the name or queue
            if not d.fleet.any_ready():
                if runnable(d, name, queue):
                    said = "no worker can take jobs now"
                # a name nobody runs is said first (the likelier fix)
                with pytest.raises(Unavailable, match=said):
                    push(d, name, queue)
                story.append(f"push {name!r} {queue!r} refused: every worker lost")
            elif runnable(d, name, queue):
                job = push(d, name, queue)
                accepted[job.id], order[job.id] = job, len(order)
                story.append(f"push {name!r} {queue!r} -> {job.id[-6:]}")
            else:
                with pytest.raises(Unavailable, match=said):
                    push(d, name, queue)
                story.append(f"push {name!r} {queue!r} refused")
        elif roll < 0.8:
            link = rng.choice(d.links)
            ids = list(link.jobs)[: rng.randint(1, 3)]
            if ids:
                ack(d, link, *(i.decode() for i in ids))
                done += len(ids)
                story.append(f"ack {len(ids)} on {link.name}")
        elif roll < 0.9:
            link = rng.choice(d.links)
            if link.state is not LOST:
                notice(d, link, zmq.EVENT_DISCONNECTED)
                story.append(f"lose {link.name}")
        else:
            lost = [link for link in d.links if link.state is LOST]
            if lost:
                link = rng.choice(lost)
                if redeploy and rng.random() < 0.5:
                    serves[link.index] = fleet(rng)[0]
                join(d, link, serves[link.index], credits[link.index])
                story.append(f"back {link.name} running {serves[link.index]}")
        d.flush()
        for link in d.links:
            for job_id in sent_since(link, seen):
                job = accepted[job_id]
                if job.attempt == 1:
                    route = (job.name, job.queue)
                    first_sent.setdefault(route, []).append(order[job_id])
        check(d, story)
    for name, places in first_sent.items():
        assert places == sorted(places), f"{name!r} sent out of order: {story}"
    # Every worker back, everything acknowledged: nothing was lost on the way.
    # Redeployed, a name may have lost its last worker: one more deploy with
    # a default handler everywhere runs what waits for it.
    for link in d.links:
        if redeploy and link.state is not LOST:
            notice(d, link, zmq.EVENT_DISCONNECTED)
        if link.state is LOST:
            if redeploy:
                serves[link.index] = Serves(frozenset(), True, EVERY_QUEUE)
            join(d, link, serves[link.index], credits[link.index])
    for _ in range(10 * len(accepted) + 10):
        d.flush()
        busy = [link for link in d.links if link.jobs]
        if not busy:
            break
        for link in busy:
            done += len(link.jobs)
            ack(d, link, *(i.decode() for i in list(link.jobs)))
    assert d.pending() == 0 and d.fleet.in_flight() == 0, story[-30:]
    dead = d.dead_letters.count  # lost with MAX_DELIVERIES workers: given up on
    assert d.books.acked + dead == len(accepted), (d.books.acked, dead, story)


@pytest.mark.parametrize("seed", range(40))
def test_with_credit_to_spare_each_name_goes_round_robin_exactly(seed: int) -> None:
    rng = random.Random(1000 + seed)
    while True:  # a fleet that runs nothing has no round-robin: draw another
        serves = fleet(rng)
        if seed % 4 == 0:  # a uniform fleet: every worker the same names
            serves = [serves[0]] * len(serves)
        d = start(serves, [10_000] * len(serves))
        routes = [(n, q) for n in PUSHED for q in QUEUES if runnable(d, n, q)]
        if routes:
            break
    pushed = []
    for _ in range(rng.randint(20, 200)):
        pushed.append(push(d, *rng.choice(routes)))
        if rng.random() < 0.3:
            d.flush()
    d.flush()
    where = {job.key: link for link in d.links for job in link.jobs.values()}
    cursors: dict[tuple[bytes | None, bytes], int] = {}
    known = d.fleet.routes.known
    for k, job in enumerate(pushed):
        if d.fleet.routes.uniform:
            expected = d.links[k % len(d.links)]
        else:
            key = (job.name if job.name in known else None, job.queue)
            eligible = [link for link in d.links
                        if link.serves.runs(job.name, job.queue)]  # fmt: skip
            turn = cursors.get(key, 0)
            cursors[key] = turn + 1
            expected = eligible[turn % len(eligible)]
        assert where[job.key] is expected, (
            f"seed {seed}, fleet {serves}: job {k} ({job.name!r} {job.queue!r}) went to "
            f"{where[job.key].name}, round-robin says {expected.name}"
        )


def test_a_full_name_does_not_hold_back_the_others() -> None:
    """A: only "mail" (credit 1); B: only "ship". Mail waits; ship goes past it."""
    d = start([Serves(frozenset({b"mail"}), False),
               Serves(frozenset({b"ship"}), False)], [1, 5])  # fmt: skip
    a, b = d.links
    mails = [push(d, b"mail") for _ in range(3)]
    ships = [push(d, b"ship") for _ in range(3)]
    d.flush()
    assert list(a.jobs) == [mails[0].key]
    assert list(b.jobs) == [job.key for job in ships]
    assert d.pending() == 2 and d.status(mails[1].id)["status"] == "queued"
    ack(d, a, mails[0].id)
    d.flush()
    assert list(a.jobs) == [mails[1].key], "the lane goes first, in order"


def test_a_name_nobody_runs_is_refused_at_once_naming_it() -> None:
    d = start([Serves(frozenset({b"welcome_email"}), False),
               Serves(frozenset({b"ship_order"}), False)], [5, 5])  # fmt: skip
    with pytest.raises(Unavailable) as refused:
        push(d, b"ship_ordr")
    text = str(refused.value)
    assert "'ship_ordr'" in text and "'ship_order', 'welcome_email'" in text, text
    assert "@handlers.job('ship_ordr')" in text, text
    assert d.books.rejected_by == {"no_handler": 1}
    # A request forwarded over HTTP is named by its path: the same rule.
    with pytest.raises(Unavailable, match="'/jobs'"):
        d.submit(Envelope.new(b"POST", b"/jobs", b"", b"", b"{}"))


def test_a_name_whose_only_workers_are_lost_waits_for_them() -> None:
    d = start([Serves(frozenset({b"mail"}), False),
               Serves(frozenset({b"ship"}), False)], [5, 5])  # fmt: skip
    a, b = d.links
    notice(d, b, zmq.EVENT_DISCONNECTED)
    assert b.state is LOST
    job = push(d, b"ship")  # accepted: its worker said it runs it, and may return
    d.flush()
    assert not a.jobs and d.pending() == 1
    join(d, b, Serves(frozenset({b"ship"}), False), 5)
    d.flush()
    assert list(b.jobs) == [job.key]


def test_a_uniform_fleet_takes_the_fast_path() -> None:
    d = start([protocol.EVERYTHING] * 3, [5, 5, 5])
    assert d.fleet.routes.everything
    jobs = [push(d, name) for name in (b"x", b"y", b"x", b"z", b"x", b"y")]
    d.flush()
    for k, job in enumerate(jobs):
        assert job.key in d.links[k % 3].jobs, "job k goes to worker k mod N"
    assert not d.queues.lanes


def test_workers_added_and_removed_live_change_what_is_routed() -> None:
    """WORKERS_FILE + SIGHUP: a new worker's names count once it said READY;
    a removed worker's names once it is gone (it finishes what it holds)."""
    d = start([Serves(frozenset({b"mail"}), False)], [5])
    with pytest.raises(Unavailable, match="'ship'"):
        push(d, b"ship")
    d.reconfigure(parse_workers("127.0.0.1:1,127.0.0.1:2"))
    with pytest.raises(Unavailable, match="not READY yet: tcp://127.0.0.1:2"):
        push(d, b"ship")
    mail, ship = d.links
    join(d, ship, Serves(frozenset({b"ship"}), False), 5)
    shipped = [push(d, b"ship") for _ in range(3)]
    mailed = push(d, b"mail")
    d.flush()
    assert list(ship.jobs) == [job.key for job in shipped]
    assert list(mail.jobs) == [mailed.key]
    d.reconfigure(parse_workers("127.0.0.1:1"))  # ship leaves once it holds nothing
    ack(d, ship, *(job.id for job in shipped))
    assert d.links == [mail]
    with pytest.raises(Unavailable, match="'ship'"):
        push(d, b"ship")


def test_a_replayed_job_nobody_runs_waits_for_a_worker_that_does() -> None:
    """A journal's job (or a retry coming due) skips admission: it must still
    go only to a worker that runs its name, and not hold the others back."""
    d = start([Serves(frozenset({b"mail"}), False)], [5])
    replayed = Envelope.new(b"", b"", b"", b"", b"{}", name=b"report").named("r-1")
    d.queues.add([replayed])
    mailed = push(d, b"mail")
    d.flush()
    assert list(d.links[0].jobs) == [mailed.key] and d.pending() == 1
    d.reconfigure(parse_workers("127.0.0.1:1,127.0.0.1:2"))
    join(d, d.links[1], Serves(frozenset({b"report"}), False), 5)
    d.flush()
    assert list(d.links[1].jobs) == [replayed.key] and d.pending() == 0


# -- from the careful reader's review of routing ------------------------------


def test_a_name_no_worker_runs_any_more_is_given_up_on_saying_why() -> None:
    """A worker back with another registry (report -> report_v2): its old
    name's jobs waited for ever, 'queued', and kept MAX_PENDING full, so an
    idle worker's own name was refused. Now they are dead-lettered, naming
    the name and what the workers run, and re-sendable from the file."""
    d = make(Clock(), workers="127.0.0.1:1,127.0.0.1:2", max_pending=5)
    report, mail = d.links
    join(d, report, Serves(frozenset({b"report"}), False), 1)
    join(d, mail, Serves(frozenset({b"mail"}), False), 1)
    notice(d, report, zmq.EVENT_DISCONNECTED)
    stuck = [push(d, b"report") for _ in range(6)]
    d.flush()
    with pytest.raises(Unavailable, match="MAX_PENDING=5"):
        push(d, b"report")
    join(d, report, Serves(frozenset({b"report_v2"}), False), 1)
    d.flush()
    assert d.pending() == 0
    for job in stuck:
        answer = d.status(job.id)
        assert answer["status"] == "dead", answer
        assert "no worker runs jobs named 'report' any more" in answer["reason"]
        assert "'mail', 'report_v2'" in answer["reason"], answer
    assert d.dead_letters.count == 6
    fresh = push(d, b"report_v2")
    d.flush()
    assert fresh.key in report.jobs


def test_a_workers_names_stop_counting_when_it_is_removed() -> None:
    """WORKERS_FILE + SIGHUP removing the only 'report' worker: while it
    finished what it held, pushes of 'report' were accepted, then waited for
    ever once it was gone. Its names stop counting at its removal."""
    d = make(Clock(), workers="127.0.0.1:1,127.0.0.1:2")
    mail, report = d.links
    join(d, mail, Serves(frozenset({b"mail"}), False), 5)
    join(d, report, Serves(frozenset({b"report"}), False), 5)
    running = push(d, b"report")
    waiting_job = push(d, b"report")
    d.flush()
    d.reconfigure(parse_workers("127.0.0.1:1"))
    with pytest.raises(Unavailable, match="no worker runs jobs named 'report'"):
        push(d, b"report")
    ack(d, report, running.id, waiting_job.id)  # it finishes what it holds, and goes
    assert report not in d.links and d.pending() == 0
    assert d.status(running.id)["status"] == "done"


def test_max_pending_bounds_a_names_lane_whatever_other_names_have_free() -> None:
    """The mail worker lost, an idle ship worker with credit 2,000: mail jobs
    were let in up to MAX_PENDING + 2,000, counted against credit no mail job
    can use. A lane's jobs count as waiting whatever credit others have."""
    d = make(Clock(), workers="127.0.0.1:1,127.0.0.1:2", max_pending=10)
    mail, ship = d.links
    join(d, mail, Serves(frozenset({b"mail"}), False), 1)
    join(d, ship, Serves(frozenset({b"ship"}), False), 2000)
    notice(d, mail, zmq.EVENT_DISCONNECTED)
    accepted = 0
    with pytest.raises(Unavailable, match="MAX_PENDING=10"):
        for _ in range(3000):
            push(d, b"mail")
            accepted += 1
            d.flush()  # as the dispatcher does after each wake
    assert accepted <= 11, accepted
    # MAX_PENDING counts every name's waiting jobs together (the README says
    # so): until the mail worker is back, ship's pushes are refused too.
    with pytest.raises(Unavailable, match="10 jobs already wait"):
        push(d, b"ship")
    # A name no worker runs is said as such, not as a full MAX_PENDING (review).
    with pytest.raises(Unavailable, match="no worker runs jobs named 'shipp'"):
        push(d, b"shipp")
    join(d, mail, Serves(frozenset({b"mail"}), False), 1)
    d.flush()
    ack(d, mail, *(key.decode() for key in list(mail.jobs)))
    d.flush()
    assert push(d, b"ship").id


@pytest.mark.parametrize("graceful", [True, False], ids=["given_back", "lost"])
def test_jobs_given_back_or_resent_keep_their_place_beside_a_lane(
    graceful: bool,
) -> None:
    """m1, m2 sent, m3, m4 waiting in the mail lane; the mail worker leaves
    (BYE) or is lost, then comes back. With a ship worker beside it, lanes in
    use, m3 and m4 went first (lanes were served before the queues, and jobs
    given back joined a lane's tail). The order is now the one a fleet
    without lanes gives."""
    mail_names = Serves(frozenset({b"mail"}), False)

    def order(mixed: bool) -> list[str]:
        d = make(Clock(), workers="127.0.0.1:1,127.0.0.1:2" if mixed else "127.0.0.1:1")
        a = d.links[0]
        join(d, a, mail_names, 2)
        if mixed:
            join(d, d.links[1], Serves(frozenset({b"ship"}), False), 5)
        jobs = [push(d, b"mail") for _ in range(4)]
        names = {job.id: f"m{k + 1}" for k, job in enumerate(jobs)}
        d.flush()
        if graceful:
            hear(d, a, [protocol.BYE, b""])
        notice(d, a, zmq.EVENT_DISCONNECTED)
        d.flush()
        join(d, a, mail_names, 10)
        a.sent_messages.clear()  # type: ignore[attr-defined]
        d.flush()
        return [names[i] for i in sent_since(a, {})]

    assert order(mixed=True) == order(mixed=False), "a lane changed the order"
    assert order(mixed=True)[0] == "m1"


# -- queues (issue 32, part 3) ----------------------------------------------


def test_a_queue_goes_only_to_the_workers_listening_on_it() -> None:
    """A: the default queue; B: reports only; C: both. Each queue's jobs
    go round-robin over its own workers; a queue nobody listens on, or a
    name its workers do not run, is refused naming what is wrong."""
    reports = frozenset({b"reports"})
    d = start([Serves(frozenset(), True),
               Serves(frozenset({b"render"}), False, reports),
               Serves(frozenset(), True, reports | DEFAULT_QUEUES)], [50] * 3)  # fmt: skip
    a, b, c = d.links
    plain = [push(d, b"mail") for _ in range(4)]
    rendered = [push(d, b"render", b"reports") for _ in range(4)]
    d.flush()
    assert [job.key in a.jobs for job in plain] == [True, False, True, False]
    assert [job.key in c.jobs for job in plain] == [False, True, False, True]
    assert [job.key in b.jobs for job in rendered] == [True, False, True, False]
    assert [job.key in c.jobs for job in rendered] == [False, True, False, True]
    with pytest.raises(Unavailable, match="no worker listens on queue 'mail'") as no:
        push(d, b"x", b"mail")
    assert "'default', 'reports'" in str(no.value) and "QUEUES=mail" in str(no.value)
    only = start([Serves(frozenset({b"render"}), False, reports),
                  Serves(frozenset({b"mail"}), False)], [5, 5])  # fmt: skip
    with pytest.raises(Unavailable, match="on queue 'reports' runs jobs named 'mail'"):
        push(only, b"mail", b"reports")


def test_a_replayed_job_of_a_queue_nobody_listens_on_waits_and_holds_none_back() -> (
    None
):
    """A journal's job skips admission: in a uniform fleet (the fast path)
    as in a mixed one, it waits for a worker of its queue, and the jobs
    behind it go on."""
    for serves in ([protocol.EVERYTHING] * 2,
                   [protocol.EVERYTHING, Serves(frozenset({b"x"}), False)]):  # fmt: skip
        d = start(serves, [5, 5])
        replayed = Envelope.new(b"", b"", b"", b"", b"{}", name=b"x").named("r-1")
        replayed.queue = b"reports"
        d.queues.add([replayed])
        behind = push(d, b"x")
        d.flush()
        assert behind.key in d.links[0].jobs and d.pending() == 1, serves
        assert d.status("r-1")["queue"] == "reports"
        d.reconfigure(parse_workers("127.0.0.1:1,127.0.0.1:2,127.0.0.1:3"))
        join(d, d.links[2], Serves(frozenset(), True, frozenset({b"reports"})), 5)
        d.flush()
        assert list(d.links[2].jobs) == [replayed.key] and d.pending() == 0


def test_a_queue_no_worker_listens_on_any_more_is_given_up_on_saying_why() -> None:
    d = make(Clock(), workers="127.0.0.1:1,127.0.0.1:2")
    reports, mail = d.links
    join(d, reports, Serves(frozenset(), True, frozenset({b"reports"})), 1)
    join(d, mail, Serves(frozenset(), True), 1)
    notice(d, reports, zmq.EVENT_DISCONNECTED)
    stuck = push(d, b"render", b"reports")  # its worker may come back: it waits
    d.flush()
    assert d.pending() == 1
    join(d, reports, Serves(frozenset(), True, frozenset({b"reports_v2"})), 1)
    d.flush()
    answer = d.status(stuck.id)
    assert answer["status"] == "dead" and d.pending() == 0, answer
    assert "no worker listens on queue 'reports' any more" in answer["reason"]
    assert "'default', 'reports_v2'" in answer["reason"], answer


def test_a_dead_letter_keeps_its_queue_and_a_resend_goes_back_to_it(tmp_path) -> None:
    from greenpipe.deadletter import DeadLetters, envelope

    dead = DeadLetters(str(tmp_path / "dead.jsonl"))
    job = Envelope.new(b"", b"", b"", b"", b"{}", name=b"render").named("d-1")
    job.queue = b"reports"
    plain = Envelope.new(b"", b"", b"", b"", b"{}", name=b"mail").named("d-2")
    dead.write(job, "lost", "")
    dead.write(plain, "lost", "")
    lines = [
        json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()
    ]
    assert [line.get("queue") for line in lines] == ["reports", None]
    assert [envelope(line).queue for line in lines] == [b"reports", DEFAULT_QUEUE]
    with pytest.raises(ValueError, match="queue 're ports'"):
        envelope({**lines[0], "queue": "re ports"})
