"""Bad input never crashes a process: HTTP errors are JSON, junk frames are dropped."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator

import pytest
import zmq

from greenpipe import protocol, testing
from tests.support import poll_until, read_records


@pytest.fixture
def system(start_worker, start_web):
    workers = [start_worker() for _ in range(3)]
    return start_web(workers, max_body=1000), workers


@pytest.fixture(scope="module")
def shared_web(tmp_path_factory) -> Iterator[testing.Web]:
    """One web and worker for the read-only error cases below: each request
    is answered before any job exists, so they need no system of their own
    (four process starts fewer a case)."""
    tmp = tmp_path_factory.mktemp("errors")
    worker, port = testing.start_worker("worker", 0, {})
    try:
        web = testing.start_web([f"127.0.0.1:{port}"], max_body=1000,
                                journal_dir=tmp / "journal",
                                dead_letter=tmp / "dead-letter.jsonl")  # fmt: skip
        try:
            yield web
        finally:
            assert web.proc.stop() == 0, web.proc.tail()
    finally:
        assert worker.stop() == 0, worker.tail()


def raw_http(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def response_json(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status", "needle"),
    [
        ("GET", "/nope", {}, None, 404, "no route for GET /nope"),
        ("PUT", "/jobs", {}, b"x", 405, "PUT is not allowed on /jobs"),
        ("POST", "/jobs", {"Prefer": "wait=soon"}, b"x", 400, "Prefer: wait='soon'"),
        (
            "POST",
            "/jobs",
            {"Content-Type": "application/json"},
            b"{",
            400,
            "not valid JSON",
        ),
        (
            "POST",
            "/jobs",
            {"Content-Encoding": "br"},
            b"x",
            415,
            "Content-Encoding 'br'",
        ),
        ("POST", "/jobs", {}, b"x" * 1001, 413, "Content-Length 1001"),
    ],
)
def test_http_errors_are_json_naming_the_problem(
    shared_web, method, path, headers, body, status, needle
):
    web = shared_web
    got, _, payload = web.request(method, path, body=body, headers=headers)
    assert got == status, payload
    assert set(payload) == {"error", "detail"} and needle in payload["detail"], payload


def test_chunked_bodies_up_to_max_body_and_413_past_it(system):
    web, _ = system

    def chunked(size: int) -> bytes:
        body = b"y" * size
        return (
            b"POST /jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n" + b"%x\r\n" % size + body + b"\r\n0\r\n\r\n"
        )

    status, payload = response_json(raw_http(web.port, chunked(1000)))
    assert status == 202 and "id" in payload
    status, payload = response_json(raw_http(web.port, chunked(5000)))
    assert status == 413 and "a chunked body" in payload["detail"], payload
    assert web.stats()["accepted"] == 1


def test_garbage_http_gets_400_and_the_web_keeps_serving(system):
    web, _ = system
    reply = raw_http(web.port, b"\x16\x03\x01\x02\x00garbage\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400"), reply[:80]
    reply = raw_http(web.port, os.urandom(4096))
    assert reply == b"" or reply.startswith(b"HTTP/1.1 4"), reply[:80]
    assert web.get("/")[0] == 202


def test_junk_sent_to_a_worker_port_is_dropped_counted_and_it_keeps_serving(
    system, record_dir
):
    web, workers = system
    target = workers[0]
    raw_http(target.port, os.urandom(8192))  # raw bytes: ZMTP/1.0 garbage
    raw_http(target.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 1000
    sock.connect(f"tcp://127.0.0.1:{target.port}")
    junk = [
        [b"\x99"],  # unknown kind
        [protocol.JOBS, b"not a job"],  # jobs before HELLO
        [protocol.HELLO, b"\x01"],  # short HELLO
        [protocol.PING, b"extra"],  # wrong frame count
    ]
    for frames in junk:
        sock.send_multipart(frames)
    sock.send_multipart(protocol.encode_hello(0.5, "junk sender"))
    # (HEARTBEATs may come first: a second web's READY waits for its share)
    kinds = poll_until(lambda: sock.poll(100) and sock.recv_multipart()[0],
                       lambda kind: kind == protocol.READY, 5,
                       "READY to a well-formed HELLO")  # fmt: skip
    assert kinds == protocol.READY
    bad_jobs = [
        [protocol.JOBS, b""],
        [protocol.JOBS, b"\x00" * 14],
        [protocol.JOBS, protocol.encode_job(b"bad id", 1, b"GET", b"/", b"", b"", b"")],
        [protocol.JOBS, b"a", b"b"],
    ]
    for frames in bad_jobs:
        sock.send_multipart(frames)
    sock.send(b"x" * (17 << 20))  # over MAX_FRAME: libzmq drops the connection
    sock.close()
    ctx.term()

    target.proc.expect("dropped a malformed message from connection", timeout=10)
    for _ in range(6):
        assert web.get("/")[0] == 202
    web.wait_settled()
    assert len(read_records(record_dir)[str(target.port)]) == 2  # still in the rotation
    assert target.proc.stop() == 0
    dropped = int(target.proc.expect(r"dropped (\d+) malformed messages")[1])
    assert dropped >= len(junk) + len(bad_jobs), target.proc.tail()


def test_web_drops_malformed_frames_from_a_worker(start_web):
    ctx = zmq.Context()
    fake = ctx.socket(zmq.ROUTER)
    fake.linger = 0
    port = fake.bind_to_random_port("tcp://127.0.0.1")
    try:
        web = start_web([f"127.0.0.1:{port}"], wait_barrier=False)
        assert fake.poll(10_000), "the web sent no HELLO"
        ident, *hello = fake.recv_multipart()
        assert hello[0] == protocol.HELLO
        fake.send_multipart([ident, *protocol.encode_ready(10, 1 << 20, "fake")])
        web.proc.expect("barrier met")
        fake.send_multipart([ident, b"\x77", b"junk"])
        fake.send_multipart([ident, protocol.ACKS, b"", b"\xff"])
        fake.send_multipart([ident, protocol.ACKS, b"nobody-1"])
        fake.send_multipart([ident, protocol.HEARTBEAT])
        stats = poll_until(
            web.stats, lambda s: s["stray_acks"] == 1, 5, "a stray ack counted"
        )
        assert stats["malformed"] == 2, stats
        web.proc.expect("dropped a malformed message from worker")
        assert web.get("/healthz")[0] == 200
    finally:
        fake.close()
        ctx.term()


HEADS = [
    b"Host: x\r\n\r\n",
    b"Host: 127.0.0.1:4567\r\nContent-Type: application/json\r\n"
    b"Content-Length: 13\r\nAccept: */*\r\n\r\n",
    b"host:x\r\nX-Empty:\r\nX-Trailing: a \t\r\nX-Tab:\tb\r\nX-A: 1\r\nx-a: 2\r\n\r\n",
    b"Host: x\r\nCookie: a=1\r\nCookie: b=2\r\nX-Latin: caf\xe9\r\nWeird!#$%&'*+-.^_`|~: v\r\n\r\n",
]


@pytest.mark.parametrize("head", HEADS)
def test_checked_fields_are_what_pywsgis_parser_makes_of_them(head):
    """The server builds pywsgi's header object from checked fields directly."""
    from email.parser import Parser
    from io import BytesIO

    from gevent.pywsgi import OldMessage

    from greenpipe.framing import check_fields, read_head

    fields = check_fields((1, 1), read_head(BytesIO(head).readline))
    parsed = Parser(_class=OldMessage).parsestr(head.decode("latin-1"))
    assert fields == parsed.items()
    assert list(parsed.headers) == [f"{n}: {v}\r\n" for n, v in fields]


@pytest.mark.parametrize(
    ("head", "status", "needle"),
    [
        (b"Content-Length: 3\r\nContent-Length: 40\r\n", 400, "('3', '40')"),
        (b"Content-Length : 3\r\n", 400, "'Content-Length' and its colon"),
        (b"Transfer-Encoding: gzip, chunked\r\n", 501, "'gzip'"),
        (b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", 400, "send one"),
        (b"X-A: 1\r\n 2\r\n", 400, "obs-fold"),
        (b"X-A: 1\x002\r\n", 400, "a NUL"),
    ],
)
def test_framing_refusals_name_the_value_and_what_to_send(head, status, needle):
    from io import BytesIO

    from greenpipe.framing import Refused, check_fields, read_head

    with pytest.raises(Refused) as refused:
        check_fields(
            (1, 1), read_head(BytesIO(b"Host: x\r\n" + head + b"\r\n").readline)
        )
    assert refused.value.status == status and needle in refused.value.detail
    assert "send" in refused.value.detail, refused.value.detail
