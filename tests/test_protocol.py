"""Frames: round trips, and validation that turns any garbage into ProtocolError."""

from __future__ import annotations

import contextlib
import random
import struct

import pytest
import zmq.green as zmq

from greenpipe import protocol
from greenpipe.errors import ProtocolError
from tests.test_core import Clock, hear, make, notice

pytestmark = pytest.mark.inprocess  # make test-fast


def test_job_round_trip_keeps_every_field():
    frame = protocol.encode_job(
        b"ab12-7", 2, b"POST", "/jobs/é".encode(), b"n=1&m=%20", b"application/json",
        b'{"x": 1}', protocol.WANTS_REPLY, 30_000,
    )  # fmt: skip
    job = protocol.decode_job(frame)
    assert (job.id, job.attempt, job.method, job.path) == (
        "ab12-7",
        2,
        "POST",
        "/jobs/é",
    )
    assert (job.query, job.content_type) == ("n=1&m=%20", "application/json")
    assert job.body == b'{"x": 1}' and job.json() == {"x": 1}
    assert job.args == {"n": ["1"], "m": [" "]}
    assert job.wants_reply and job.timeout == 30.0


def test_empty_body_and_binary_body():
    for body in (b"", bytes(range(256)) * 4):
        frame = protocol.encode_job(b"id-1", 1, b"GET", b"/", b"", b"", body)
        assert protocol.decode_job(frame).body == body


def test_acks_and_results_round_trip():
    frames = protocol.encode_acks(
        [b"ab-1", b"ab-2"], [protocol.encode_result(b"ab-3", 1, b"no")]
    )
    assert frames[0] == protocol.ACKS and frames[1].split() == [b"ab-1", b"ab-2"]
    assert protocol.decode_result(frames[2]) == (b"ab-3", protocol.FAILED, b"no")
    assert protocol.encode_acks([]) == [protocol.ACKS, b""]


def test_records_concatenate_into_one_frame_and_come_back_in_order():
    records = [
        protocol.encode_job(b"j-%d" % i, 1, b"POST", b"/jobs", b"", b"", b"x" * i)
        for i in range(5)
    ]
    jobs = list(protocol.decode_jobs(b"".join(records)))
    assert [(job.id, job.body) for job in jobs] == [
        (f"j-{i}", b"x" * i) for i in range(5)
    ]


def test_a_bad_record_keeps_the_good_ones_before_it():
    good = protocol.encode_job(b"ok-1", 1, b"GET", b"/", b"", b"", b"")
    bad = protocol.encode_job(b"bad id", 1, b"GET", b"/", b"", b"", b"")
    seen = []
    with pytest.raises(ProtocolError, match="is not 1-64 of"):
        for job in protocol.decode_jobs(good + bad + good):
            seen.append(job.id)
    assert seen == ["ok-1"]
    with pytest.raises(ProtocolError, match="empty"):
        list(protocol.decode_jobs(b""))


def test_control_messages_round_trip():
    version, heartbeat, name = protocol.decode_hello(
        protocol.encode_hello(0.25, "web x")
    )
    assert (version, heartbeat, name) == (protocol.VERSION, 0.25, "web x")
    ready = protocol.decode_ready(
        protocol.encode_ready(100, 1 << 20, "worker :4444", 7)
    )
    assert ready == (protocol.VERSION, 100, 1 << 20, "worker :4444", 7)
    assert protocol.decode_credit(protocol.encode_credit(-5, 9)) == (-5, 9)
    limited = protocol.encode_ready(1, 1 << 20, "w", limits={"slow": 8, "/r": 0.25})
    assert protocol.decode_limits(limited) == {b"slow": 8.0, b"/r": 0.25}
    assert protocol.decode_limits(limited[:3]) == {}, "3 frames: no limits"
    for bad in (b"\x05", b"\x05" + b"\x00" * 8 + b"ab", b"\x00" + b"\x00" * 8):
        with pytest.raises(ProtocolError, match="READY limit"):
            protocol.decode_limits([*limited[:3], bad])
    assert protocol.decode_ping(protocol.encode_ping(9)) == 9
    assert protocol.decode_bye(protocol.encode_bye("stopping")) == "stopping"
    assert protocol.decode_bye(protocol.encode_bye()) == ""


def test_ready_says_the_names_a_worker_runs_and_its_default():
    serves = protocol.Serves(frozenset({b"welcome_email", b"/jobs"}), False)
    frames = protocol.encode_ready(4, 1 << 20, "w", serves=serves)
    assert len(frames) == 5 and protocol.decode_serves(frames) == serves
    assert protocol.decode_ready(frames)[:2] == (protocol.VERSION, 4)
    plain = protocol.encode_ready(4, 1 << 20, "w")  # a plain handler: every name
    assert protocol.decode_serves(plain) == protocol.EVERYTHING
    assert protocol.EVERYTHING.runs(b"anything") and serves.runs(b"/jobs")
    assert not serves.runs(b"ship_order")
    assert serves.describe() == {
        "names": ["/jobs", "welcome_email"],
        "default": False,
        "queues": ["default"],
    }
    assert protocol.encode_serves(serves)[0] == 0, "the default queue alone: no list"
    long = protocol.Serves(frozenset({b"x" * 256, b"ok"}), True)
    assert protocol.decode_serves(protocol.encode_ready(1, 1, "w", serves=long)) == (
        protocol.Serves(frozenset({b"ok"}), True)
    ), "a name longer than a job's can never be pushed: not announced"
    with pytest.raises(ProtocolError, match="5th frame"):
        protocol.decode_serves(frames[:4])  # a READY of protocol 5's shape
    with pytest.raises(ProtocolError, match="cut short"):
        protocol.decode_serves([*frames[:4], b"\x00\x09abc"])


def test_ready_says_the_queues_a_worker_listens_on():
    """QUEUES other than the default alone ride in READY's names frame."""
    queues = frozenset({b"reports", b"default"})
    serves = protocol.Serves(frozenset({b"render"}), True, queues)
    frames = protocol.encode_ready(4, 1 << 20, "w", serves=serves)
    assert protocol.decode_serves(frames) == serves
    assert serves.runs(b"anything", b"reports") and serves.runs(b"render")
    assert not serves.runs(b"render", b"mail"), "a queue it does not listen on"
    only = protocol.Serves(frozenset(), True, frozenset({b"reports"}))
    assert not only.runs(b"x"), "not listening on the default queue"
    assert protocol.decode_serves(protocol.encode_ready(1, 1, "w", serves=only)) == only
    for bad in (b"\x02", b"\x02\x00", b"\x02\x02\x01a", b"\x02\x01\x09ab"):
        with pytest.raises(ProtocolError):
            protocol.decode_serves([*frames[:4], bad])


def test_a_worker_of_protocol_5_is_refused_naming_both_versions(caplog):
    """Its READY (4 frames, version 5) is a MISMATCH, logged with both versions."""
    d = make(Clock(), workers="127.0.0.1:1")
    link = d.links[0]
    notice(d, link, zmq.EVENT_HANDSHAKE_SUCCEEDED)
    old = protocol.encode_ready(4, 1 << 20, "old worker")[:4]
    old[1] = bytes([5]) + old[1][1:]
    hear(d, link, old)
    assert not d.barrier_met and link.state == "connecting"
    assert f"speaks protocol 5, this web {protocol.VERSION}" in caplog.text


@pytest.mark.parametrize(
    ("frame", "needle"),
    [
        (b"", "shorter than its header"),
        (b"\x00" * 17, "shorter than its header"),
        (
            # flags, attempt, retries, time limit, then the lengths (protocol 4)
            struct.pack("!BHHIBBBHHHI", 0, 1, 0, 0, 200, 0, 0, 0, 0, 0, 0) + b"x",
            "needs 222 bytes",
        ),
        (
            protocol.encode_job(b"ok-1", 1, b"GET", b"/", b"", b"", b"") + b"z",
            "1 bytes after",
        ),
        (
            protocol.encode_job(b"bad id!", 1, b"GET", b"/", b"", b"", b""),
            "is not 1-64 of",
        ),
        (protocol.encode_job(b"ok-1", 0, b"GET", b"/", b"", b"", b""), "attempt 0"),
        (protocol.encode_job(b"ok-1", 1, b"G T", b"/", b"", b"", b""), "is not a word"),
        (protocol.encode_job(b"ok-1", 1, b"\xff", b"/", b"", b"", b""), "undecodable"),
    ],
)
def test_bad_job_frames_are_named(frame, needle):
    with pytest.raises(ProtocolError, match=needle):
        protocol.decode_job(frame)


@pytest.mark.parametrize(
    "frames",
    [
        [protocol.HELLO],
        [protocol.HELLO, b"\x01", b"x"],
        [protocol.HELLO, b"\x01\x00\x00\x00\x00", b""],
    ],
)
def test_bad_hello(frames):
    with pytest.raises(ProtocolError):
        protocol.decode_hello(frames)


def test_random_bytes_never_raise_anything_but_protocol_error():
    rng = random.Random(1234)
    for _ in range(20_000):
        frame = rng.randbytes(rng.randrange(0, 64))
        for decode in (protocol.decode_job, protocol.decode_result):
            with contextlib.suppress(ProtocolError):
                decode(frame)
        with contextlib.suppress(ProtocolError):
            list(protocol.decode_jobs(frame))
        frames = [
            rng.randbytes(rng.randrange(0, 12)) for _ in range(rng.randrange(0, 4))
        ]
        for decode in (protocol.decode_hello, protocol.decode_ready,
                       protocol.decode_credit, protocol.decode_ping,
                       protocol.decode_serves):  # fmt: skip
            with contextlib.suppress(ProtocolError):
                decode(frames)


def test_mutated_valid_frames_never_raise_anything_but_protocol_error():
    rng = random.Random(99)
    good = protocol.encode_job(
        b"abc-1", 1, b"POST", b"/jobs", b"a=1", b"text/plain", b"body"
    )
    for _ in range(20_000):
        frame = bytearray(good)
        for _ in range(rng.randrange(1, 4)):
            frame[rng.randrange(len(frame))] = rng.randrange(256)
        cut = bytes(frame)[: rng.randrange(len(frame) + 1)]
        with contextlib.suppress(ProtocolError):
            list(protocol.decode_jobs(cut * 2))


def test_a_job_carries_its_name_and_a_request_is_named_by_its_path():
    named = protocol.encode_job(b"n-1", 1, b"", b"", b"", b"", b"{}", name=b"welcome")
    job = protocol.decode_job(named)
    assert (job.name, job.method, job.path) == ("welcome", "", "")
    forwarded = protocol.decode_job(
        protocol.encode_job(b"r-1", 1, b"GET", b"/a", b"", b"", b"")
    )
    assert (forwarded.name, forwarded.method) == ("/a", "GET")
    accented = protocol.encode_job(
        b"n-2", 1, b"", b"", b"", b"", b"", name="café".encode()
    )
    assert protocol.decode_job(accented).name == "café"
