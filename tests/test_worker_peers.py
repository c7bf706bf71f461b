"""The webs as a worker sees them (`greenpipe.worker.peers`), without sockets.

`Peers` answers HELLO and shares the credit by returning frames; these tests
read those frames as a web would.
"""

from __future__ import annotations

import pytest

from greenpipe import protocol
from greenpipe.handlers import Handlers, noop
from greenpipe.handling import in_app_context
from greenpipe.worker.peers import MAX_PEERS, Peers, announced

pytestmark = pytest.mark.inprocess  # make test-fast


def _hello(peers: Peers, ident: bytes, draining: bool = False) -> list[bytes] | None:
    frames = protocol.encode_hello(0.5, f"web {ident.decode()}")
    return peers.hello(ident, frames, "worker :1", draining)


def test_a_first_hello_waits_for_its_share_then_ready_carries_the_limits():
    peers = Peers(capacity=8, max_frame=1 << 20, limits={"report": 30.0})
    assert _hello(peers, b"a") is None, "READY waits until its share is free"
    [(account, change, frames)] = list(peers.share(tick=False, name="worker :1"))
    assert (account.key, change) == (b"a", 0)
    _, credit, max_frame, name, _ = protocol.decode_ready(frames)
    assert (credit, max_frame, name) == (8, 1 << 20, "worker :1")
    assert protocol.decode_limits(frames) == {b"report": 30.0}
    again = _hello(peers, b"a")  # a repeated HELLO: READY again, what it has now
    assert again is not None and again[0] == protocol.READY
    assert protocol.decode_ready(again)[1] == 8


def test_hello_is_answered_bye_when_draining_or_in_another_version():
    peers = Peers(capacity=4, max_frame=1024, limits={})
    bye = _hello(peers, b"a", draining=True)
    assert bye == protocol.encode_bye("worker is stopping")
    assert len(peers) == 0, "a web saying HELLO to a stopping worker is not kept"
    old = protocol.encode_hello(0.5, "old web")
    old[1] = bytes([protocol.VERSION - 1]) + old[1][1:]  # the version leads
    reply = peers.hello(b"b", old, "worker :1", False)
    assert reply is not None and reply[0] == protocol.BYE
    assert "speaks protocol" in protocol.decode_bye(reply)


def test_beyond_max_peers_the_stalest_web_is_forgotten():
    peers = Peers(capacity=4, max_frame=1024, limits={})
    for n in range(MAX_PEERS):
        _hello(peers, b"%d" % n)
        peers.by_ident[b"%d" % n].last_seen = float(n)  # web 0 heard from first
    _hello(peers, b"new")
    assert len(peers) == MAX_PEERS
    assert peers.get(b"0") is None and peers.get(b"new") is not None
    assert b"0" not in peers.shares.accounts


def test_outcomes_not_sent_go_back_in_front_of_newer_ones():
    peers = Peers(capacity=4, max_frame=1024, limits={})
    _hello(peers, b"a")
    peer = peers.by_ident[b"a"]
    peer.answer(b"j-1", protocol.OK, b"")
    peer.answer(b"j-2", protocol.FAILED, b"boom")
    taken = peer.take()
    assert taken is not None and peer.take() is None
    peer.answer(b"j-3", protocol.OK, b"")
    peer.put_back(*taken)  # the queue was full
    ok, results = peer.take() or ([], [])
    assert ok == [b"j-1", b"j-3"]
    assert [protocol.decode_result(r)[:2] for r in results] == [
        (b"j-2", protocol.FAILED)
    ]


def test_ready_announces_the_registrys_names_and_its_default():
    handlers = Handlers()
    handlers.add("welcome_email", noop)
    handlers.add("/jobs", noop)
    serves = announced(handlers)
    assert serves == protocol.Serves(frozenset({b"welcome_email", b"/jobs"}), False)
    handlers.default(noop)
    assert announced(handlers).default
    assert announced(noop) == protocol.EVERYTHING, "a plain callable runs every name"
    flask = pytest.importorskip("flask")
    wrapped = in_app_context(Handlers(), flask.Flask("t"))  # APP=: the same names
    assert announced(wrapped) == protocol.Serves(frozenset(), False)
    peers = Peers(capacity=2, max_frame=1024, limits={}, serves=serves)
    assert _hello(peers, b"a") is None
    [(_, _, frames)] = list(peers.share(tick=False, name="worker :1"))
    assert protocol.decode_serves(frames) == serves
