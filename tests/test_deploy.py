"""A deploy is invisible to clients (issue 21): stops, crashes and rolling restarts.

Real processes, real signals, 30 keep-alive clients. A client counts what
each request got: a 202 (with its job id), greenpipe's JSON 503 with
Retry-After, any other answer (kept whole, to be shown), a refused
connection, or a kept-alive connection the server closed before answering
(which a client retries on a new connection, as HTTP clients do). The
workers' own records say whether every accepted job was handled.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time
from collections import Counter

import pytest

from greenpipe import testing
from greenpipe.httpserver import BETWEEN_REQUESTS_S
from greenpipe.testing import Proc, entry, flags
from tests.support import PYTHON, ROOT, handled_ids, poll_until

CLIENTS = 30


class Clients:
    """`count` keep-alive HTTP clients sending POST /jobs back to back until stop()."""

    def __init__(self, port: int, count: int = CLIENTS) -> None:
        self.port = port
        self.counts: Counter[str] = Counter()
        self.accepted: set[str] = set()
        self.odd: list[tuple[int, str, str]] = []  # (status, content type, body)
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, daemon=True) for _ in range(count)
        ]
        for thread in self._threads:
            thread.start()

    def _count(self, kind: str) -> None:
        with self._lock:
            self.counts[kind] += 1

    def _client(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        headers = {"Content-Type": "application/json"}
        while not self._stopped.is_set():
            try:
                conn.request("POST", "/jobs", body=b"{}", headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
            except ConnectionRefusedError:
                self._count("refused")
                conn.close()
                self._stopped.wait(0.01)  # sleep-ok: a refused client's pause
                continue
            except (OSError, http.client.HTTPException):
                self._count("closed")  # before any answer: retried, new connection
                conn.close()
                continue
            kind = str(resp.status)
            if resp.status == 202:
                with self._lock:
                    self.accepted.add(json.loads(raw)["id"])
            elif (
                resp.status == 503
                and resp.getheader("Retry-After")
                and resp.getheader("Content-Type") == "application/json"
                and "error" in json.loads(raw)
            ):
                kind = "503 json"
            else:
                with self._lock:
                    self.odd.append(
                        (resp.status, resp.getheader("Content-Type") or "", raw[:200])
                    )
            self._count(kind)
        conn.close()

    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())

    def wait_answers(self, more: int, timeout: float = 20.0) -> None:
        """Block until `more` further requests got an answer or an error."""
        target = self.total() + more
        poll_until(self.total, lambda n: n >= target, timeout,
                   f"{more} more requests answered")  # fmt: skip

    def stop(self) -> Counter[str]:
        self._stopped.set()
        for thread in self._threads:
            thread.join(15)
        return self.counts


def assert_a_clean_stop(clients: Clients, record_dir) -> None:
    """Only 202s and JSON 503s, refused once nothing listens; nothing accepted lost."""
    assert not clients.odd, f"answers other than 202 or JSON 503: {clients.odd[:5]}"
    assert set(clients.counts) <= {"202", "503 json", "refused"}, clients.counts
    assert_nothing_lost(record_dir, clients.accepted)


def assert_nothing_lost(record_dir, accepted: set[str], timeout: float = 20.0) -> None:
    poll_until(lambda: handled_ids(record_dir).keys(), lambda ids: ids >= accepted,
               timeout, f"all {len(accepted)} accepted jobs handled")  # fmt: skip


@pytest.mark.parametrize("processes", [1, 2])
def test_sigterm_under_keep_alive_load_answers_only_202_or_json_503(
    start_worker, start_web, record_dir, processes
):
    workers = [start_worker() for _ in range(3)]
    web = start_web(workers, web_processes=processes)
    clients = Clients(web.port)
    clients.wait_answers(1000)
    web.proc.signal(signal.SIGTERM)
    assert web.proc.wait_exit(8) == 0, web.proc.tail()
    counts = clients.stop()
    print(f"WEB_PROCESSES={processes}, SIGTERM under {CLIENTS} clients: "
          f"{dict(counts)}")  # fmt: skip
    if processes > 1:
        # Each process has its own listening socket (SO_REUSEPORT): a connection
        # the kernel queued to one in the instant it closes is reset, as under
        # gunicorn below (1 of ~4,000 at load 8; 3 in a loaded suite run). That
        # race stays, at most once per client, as each reconnects when its
        # keep-alive connection is closed at the stop; a web resetting
        # connections mid-request would show thousands.
        assert counts.get("closed", 0) <= CLIENTS, counts
        counts.pop("closed", None)
    assert_a_clean_stop(clients, record_dir)


USER_APP = """
from gevent import monkey

monkey.patch_all()

import gevent
from flask import Flask

from greenpipe import Greenpipe, serve

app = Flask("slow")
Greenpipe(app)


@app.get("/slow")
def slow():
    app.logger.warning("slow: in the view")
    gevent.sleep(30)  # sleep-ok: a view still at work when the stop window ends
    return {"ok": True}


@app.get("/fast")
def fast():
    return {"ok": True}


if __name__ == "__main__":
    raise SystemExit(serve(app))
"""


def test_serve_app_stop_closes_idle_at_once_and_interrupts_a_slow_view_into_503(
    start_worker, procs, tmp_path
):
    worker = start_worker()
    (tmp_path / "slowapp.py").write_text(USER_APP)
    app = Proc("slowapp", [PYTHON, str(tmp_path / "slowapp.py"), "--port", "0",
                           "--workers", worker.address,
                           "--journal-dir", str(tmp_path / "journal")],
               env={"PYTHONPATH": str(ROOT)})  # fmt: skip
    procs.append(app)
    port = int(app.expect(r"serving http://[^:]+:(\d+)", 15)[1])
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    idle.request("GET", "/fast")
    assert idle.getresponse().read() == b'{"ok":true}\n'
    slow = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    slow.request("GET", "/slow")
    app.expect("slow: in the view")
    silent = socket.create_connection(("127.0.0.1", port), timeout=10)
    # A connection is idle once it has been quiet for BETWEEN_REQUESTS_S.
    time.sleep(BETWEEN_REQUESTS_S)  # sleep-ok: makes the connection idle
    app.signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert idle.sock.recv(1) == b"", "the idle connection was not closed"
    closed_after = time.monotonic() - signalled
    resp = slow.getresponse()
    answered_after = time.monotonic() - signalled
    body = json.loads(resp.read())
    assert (resp.status, resp.getheader("Retry-After")) == (503, "1"), body
    assert resp.getheader("Connection") == "close" and "stopping" in body["detail"]
    assert silent.recv(4096).startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert app.wait_exit(6) == 0, app.tail()
    assert closed_after < 0.5 <= answered_after, (closed_after, answered_after)
    app.expect(r"1 idle connections closed, 2 requests answered 503")


def child_pids(web) -> list[int]:
    line = web.proc.expect(r"processes sharing \S+ \(pids ([\d, ]+)\)")
    return [int(pid) for pid in line[1].split(", ")]


def test_a_killed_process_is_replaced_and_the_other_keeps_serving(
    start_worker, start_web, record_dir
):
    workers = [start_worker() for _ in range(3)]
    web = start_web(workers, web_processes=2)
    victim, survivor = child_pids(web)
    clients = Clients(web.port)
    clients.wait_answers(1000)
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    died = web.proc.expect(rf"process (\d) \(pid {victim}\) was killed by SIGKILL")
    line = web.proc.expect(rf"process {died[1]} \(pid (\d+)\) serving", 10, times=2)
    replaced_s = time.monotonic() - killed
    clients.wait_answers(1000)  # both serve again
    counts = clients.stop()
    print(f"WEB_PROCESSES=2, kill -9 of one under {CLIENTS} clients: {dict(counts)}, "
          f"replaced in {replaced_s:.2f} s")  # fmt: skip
    newcomer = int(line[1])
    assert os.kill(survivor, 0) is None and newcomer not in (victim, survivor)
    assert not clients.odd, f"answers other than 202 or JSON 503: {clients.odd[:5]}"
    assert set(counts) <= {"202", "closed"}, counts  # closed: the dead one's
    assert counts["closed"] <= CLIENTS, counts
    assert_nothing_lost(record_dir, clients.accepted)
    # The newcomer took the dead one's journal slot (slots 0 and 1, no third)
    # and replayed what it owed before it served (the journal opens first).
    replay = web.proc.expect(r"journal: .* \(slot (\d+).*replaying (\d+) jobs", times=3)
    assert replay[1] in ("0", "1"), replay[0]


def test_a_process_that_dies_at_start_is_restarted_with_backoff_and_says_why(
    start_worker, procs, tmp_path
):
    ops, taken = ports_in_a_row()  # process 1's own port is taken: it cannot start
    web = Proc("web", [*entry("web"), *flags({
        "port": 0, "workers": start_worker().address, "web_processes": 2,
        "ops_port": ops, "journal_dir": tmp_path / "journal"})])  # fmt: skip
    procs.append(web)
    web.expect(rf"cannot listen on http://127\.0\.0\.1:{ops + 1}")
    lines = [
        web.expect(
            r"process 1 \(pid \d+\) exited 1 before it served, after "
            r"[\d.]+ s \((\d) in a row\); starting another (.*)",
            timeout=10,
            times=n,
        )  # fmt: skip
        for n in (1, 2, 3)
    ]
    assert [(m[1], m[2]) for m in lines] == [
        ("1", "now"),
        ("2", "in 0.5 s"),
        ("3", "in 1 s"),
    ], [m[0] for m in lines]
    taken.close()  # the port is free again: the next one starts
    web.expect(r"process 1 \(pid \d+\) serving", timeout=15)
    web.expect(r"process 0 \(pid \d+\) serving")


def ports_in_a_row() -> tuple[int, socket.socket]:
    """A free port P and a socket listening on P + 1 (without SO_REUSEPORT)."""
    for _ in range(50):
        base = testing.ports_in_a_row(2)  # outside the OS's ephemeral range
        taken = socket.socket()
        try:
            taken.bind(("127.0.0.1", base + 1))
        except OSError:
            taken.close()
            continue
        taken.listen()
        return base, taken
    raise AssertionError("no two free ports in a row in 50 tries")


def test_rolling_restart_under_load_refuses_nothing(
    start_worker, start_web, record_dir
):
    workers = [start_worker() for _ in range(3)]
    web = start_web(workers, web_processes=2)
    old = set(child_pids(web))
    clients = Clients(web.port)
    clients.wait_answers(1000)
    web.proc.signal(signal.SIGUSR2)
    done = web.proc.expect(r"rolling restart done in ([\d.]+) s: pids ([\d, ]+)", 30)
    clients.wait_answers(1000)
    counts = clients.stop()
    print(f"WEB_PROCESSES=2, rolling restart under {CLIENTS} clients: "
          f"{dict(counts)}, in {done[1]} s")  # fmt: skip
    assert not old & {int(pid) for pid in done[2].split(", ")}, done[0]
    assert not clients.odd, f"answers other than 202: {clients.odd[:5]}"
    assert set(counts) == {"202"}, counts
    assert_nothing_lost(record_dir, clients.accepted)


def test_gunicorn_sigterm_under_load_answers_only_202_or_json_503(
    start_worker, start_gunicorn, record_dir
):
    workers = [start_worker() for _ in range(3)]
    gunicorn, port = start_gunicorn(workers)
    gunicorn.expect("barrier met", 20, times=2)
    clients = Clients(port)
    clients.wait_answers(1000)
    gunicorn.signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert gunicorn.wait_exit(10) == 0, gunicorn.tail()
    stopped_s = time.monotonic() - signalled
    counts = clients.stop()
    print(f"gunicorn -w 2, SIGTERM under {CLIENTS} clients: {dict(counts)}, "
          f"stopped in {stopped_s:.1f} s")  # fmt: skip
    # gunicorn's workers share one listening socket: a connection the kernel
    # queues between the last accept and the last close is reset (seen once
    # in several runs). That race stays; anything more is a regression.
    assert counts.get("closed", 0) <= 2, counts
    counts.pop("closed", None)
    assert_a_clean_stop(clients, record_dir)


def test_the_supervisors_own_variable_is_not_a_misspelt_setting(
    start_worker, start_web
):
    """Issue 30: every child warned about GREENPIPE_READY_FD; with refuse, none started."""
    worker = start_worker().address
    web = start_web([worker], web_processes=2)
    assert not web.proc.matches("READY_FD"), web.proc.tail()
    strict = start_web([worker], web_processes=2, env={"UNKNOWN_SETTINGS": "refuse"})
    assert not strict.proc.matches("READY_FD"), strict.proc.tail()


def test_a_childs_configuration_error_is_final_and_the_supervisor_exits_2(procs):
    """Each child would refuse it the same: no restart loop, the others stopped."""
    web = Proc("web", [PYTHON, "-m", "tests.child_config_error", *flags({"port": 0, "workers": "127.0.0.1:9",
               "web_processes": 2, "journal_dir": "off",
               "unknown_settings": "refuse"})])  # fmt: skip
    procs.append(web)
    web.expected_exit = 2
    web.expect(r"GREENPIPE_MAX_PENDNG.* is not a setting")
    assert web.wait_exit(15) == 2, web.tail()
    web.expect(r"exited 2: a configuration error .* exiting 2")
    assert len(web.matches(r"starting another")) == 0, web.tail()
