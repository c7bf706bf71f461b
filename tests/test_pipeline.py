"""greenpipe.pushpull in one process: the barrier, the stream, pause and resume."""

from __future__ import annotations

import gevent
import gevent.queue
import pytest

from greenpipe.errors import LinkError
from greenpipe.pushpull import Puller, Pusher

pytestmark = pytest.mark.inprocess  # make test-fast


@pytest.fixture
def pair():
    pusher = Pusher("tcp://127.0.0.1:*", bind=True)
    puller = Puller(pusher.endpoint)
    pusher.wait_for_peers(1, timeout=5)
    yield pusher, puller
    puller.close()
    pusher.close()


def test_barrier_counts_handshakes_and_times_out_naming_the_count():
    with Pusher("tcp://127.0.0.1:*", bind=True) as pusher:
        with pytest.raises(
            LinkError, match=r"0 of 2 peers connected to tcp://127\.0\.0\.1:\d+"
        ):
            pusher.wait_for_peers(2, timeout=0.3)
        with Puller(pusher.endpoint), Puller(pusher.endpoint):
            pusher.wait_for_peers(2, timeout=5)
            assert pusher.peers == 2


def test_round_robin_from_the_first_message_once_all_are_connected():
    with Pusher("tcp://127.0.0.1:*", bind=True) as pusher:
        pullers = [Puller(pusher.endpoint) for _ in range(3)]
        pusher.wait_for_peers(3, timeout=5)
        for n in range(9):
            pusher.send_json(n)
        got = [sorted(p.recv_json() for _ in range(3)) for p in pullers]
        assert sorted(map(tuple, got)) == [(0, 3, 6), (1, 4, 7), (2, 5, 8)]
        for puller in pullers:
            puller.close()


def test_iteration_and_multipart(pair):
    pusher, puller = pair
    pusher.send(b"one")
    pusher.send([b"two", b"frames"])
    assert next(puller) == b"one"
    assert puller.recv_multipart() == [b"two", b"frames"]


def test_pause_holds_a_message_and_delivers_it_after_resume(pair):
    pusher, puller = pair
    taken: gevent.queue.Queue[bytes] = gevent.queue.Queue()

    def consume() -> None:
        for message in puller:
            taken.put(message)

    consumer = gevent.spawn(consume)
    pusher.send(b"1")
    assert taken.get(timeout=5) == b"1"
    puller.pause()
    for n in (b"2", b"3", b"4"):
        pusher.send(n)
    with pytest.raises(gevent.queue.Empty):
        taken.get(timeout=0.3)  # nothing is taken while paused
    puller.resume()
    assert [taken.get(timeout=5) for _ in range(3)] == [b"2", b"3", b"4"], (
        "the held message was lost or reordered"
    )
    puller.close()
    consumer.join(5)
    assert consumer.dead, "closing the puller did not end the iteration"


def test_close_ends_a_paused_iteration_and_recv_says_closed(pair):
    _, puller = pair
    puller.pause()
    iterator = gevent.spawn(lambda: list(puller))
    gevent.idle()  # let the iterator start and block on the pause
    assert not iterator.dead
    puller.close()
    assert iterator.get(timeout=5) == []
    with pytest.raises(LinkError, match="is closed"):
        puller.recv()


def test_context_managers_close_their_sockets():
    with (
        Pusher("tcp://127.0.0.1:*", bind=True) as pusher,
        Puller(pusher.endpoint) as puller,
    ):
        assert not pusher.closed and not puller.closed
    assert pusher.closed and puller.closed


def test_bad_endpoint_is_a_link_error_naming_it():
    with pytest.raises(LinkError, match="cannot connect to nowhere"):
        Puller("nowhere")


def test_many_greenlets_sending_into_a_full_pusher_all_get_through():
    """Senders beyond the high-water mark wait their turn (zmq.green lets one wait).

    examples.cluster's workers send results from every job's greenlet; with
    the master slow to read, a second waiting sender raised "Only one greenlet
    can be waiting on this event" and the job's result was lost.
    """
    with Puller("tcp://127.0.0.1:*", bind=True, hwm=1) as puller:
        with Pusher(puller.endpoint, hwm=1) as pusher:
            pusher.wait_for_peers(1, timeout=5)
            puller.pause()
            senders = [gevent.spawn(pusher.send_json, n) for n in range(200)]
            gevent.sleep(0.05)  # sleep-ok: idle, so the senders fill the pipe and wait
            puller.resume()
            got = []
            with gevent.Timeout(10, False):
                while len(got) < 200:
                    got.append(puller.recv_json())
            gevent.joinall(senders, timeout=10)
            failed = [g.exception for g in senders if not g.successful()]
            assert not failed, f"{len(failed)} senders failed, e.g. {failed[0]!r}"
            assert sorted(got) == list(range(200)), f"{len(got)} of 200 arrived"
