"""WEB_PROCESSES web processes on one port, kept at that number, restarted in turn.

A child that dies is replaced (at once, then after a growing delay if it
keeps dying); SIGUSR2 replaces the children one at a time, each new one
serving before the old one stops (a rolling restart); SIGHUP is passed on
(each child re-reads WORKERS_FILE); only SIGTERM/SIGINT stop them all, and
a child's configuration error (exit 2): every child would refuse it the same.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import gevent
import gevent.event
import gevent.os
import gevent.queue

log = logging.getLogger(__name__)
READY_ENV = "GREENPIPE_READY_FD"  # a child writes one byte there once it serves
BACKOFF_S = (0.5, 30.0)  # delay before the 2nd restart in a row, and the largest
SETTLED_S = 10.0  # a child that served this long and then died is not "failing"
START_S = 10.0  # time for a child to start, on top of READY_TIMEOUT
CONFIG_EXIT = 2  # a child refused its configuration (entry points' ConfigError)


@dataclass(eq=False)
class Child:
    """One web process: its slot (index), and whether it said it serves."""

    index: int
    popen: subprocess.Popen
    started: float = field(default_factory=time.monotonic)
    serving: gevent.event.AsyncResult = field(default_factory=gevent.event.AsyncResult)
    retiring: bool = False  # stopped on purpose (a rolling restart, or a failed one)

    @property
    def pid(self) -> int:
        return self.popen.pid


def reserve(host: str, port: int) -> socket.socket:
    """The port, bound (not listening) for as long as the supervisor runs.

    It fixes port 0 to one number for every child, and keeps the port while
    no child listens (all dead at once); not listening, it takes no
    connections away from the children (SO_REUSEPORT spreads them).
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def exit_text(code: int) -> str:
    """ "exited 1", "was killed by SIGKILL"."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited {code}"


class Supervisor:
    """Runs `count` children (`argv(index)`), keeps them at `count`, rolls them."""

    def __init__(
        self,
        argv: Callable[[int], list[str]],
        env: Mapping[str, str],
        count: int,
        stop_timeout: float,
        ready_timeout: float,
        url: str = "",
    ) -> None:
        self.url = url  # what the children share, for the log
        self.argv = argv
        self.env = dict(env)
        self.slots: list[Child | None] = [None] * count
        self.failures = [0] * count  # deaths in a row, per slot
        self.alive: set[Child] = set()
        self.stop_timeout = stop_timeout  # seconds a child has to stop
        self.ready_timeout = ready_timeout + START_S
        self.events: gevent.queue.Queue = gevent.queue.Queue()
        self.rolling: gevent.Greenlet | None = None
        self.stopping = False

    def run(self) -> int:
        """Start the children; serve until SIGTERM/SIGINT; stop them; an exit code."""
        for index in range(len(self.slots)):
            self.slots[index] = self._start(index)
        log.info("web: %d processes sharing %s (pids %s); SIGUSR2 restarts them "
                 "one at a time", len(self.slots), self.url,
                 ", ".join(str(c.pid) for c in self.slots if c))  # fmt: skip
        for signum in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(signum, self.events.put, ("stop", None))
        gevent.signal_handler(signal.SIGUSR2, self.events.put, ("roll", None))
        gevent.signal_handler(signal.SIGHUP, self._pass_on, signal.SIGHUP)
        while True:
            what, arg = self.events.get()
            if what == "stop":
                return self._stop_all()
            if what == "exited" and self._refused(*arg):
                self._stop_all()
                return CONFIG_EXIT
            if what == "exited":
                self._exited(arg)
            elif what == "start" and self.slots[arg] is None:
                self.slots[arg] = self._start(arg)
            elif what == "roll":
                if self.rolling is None or self.rolling.dead:
                    self.rolling = gevent.spawn(self._roll)
                else:
                    log.warning("web: SIGUSR2 during a rolling restart: ignored")

    def _start(self, index: int) -> Child:
        read_end, write_end = os.pipe()
        try:
            env = {**self.env, READY_ENV: str(write_end)}
            popen = subprocess.Popen(self.argv(index), env=env, pass_fds=(write_end,))
        finally:
            os.close(write_end)
        child = Child(index, popen)
        self.alive.add(child)
        gevent.spawn(self._watch, child, read_end)
        return child

    def _watch(self, child: Child, read_end: int) -> None:
        try:
            os.set_blocking(read_end, False)
            said = gevent.os.nb_read(read_end, 1)  # b"" once it exits without
        finally:
            os.close(read_end)
        if said:
            took = time.monotonic() - child.started
            log.info("web: process %d (pid %d) serving, %.2f s after its start",
                     child.index, child.pid, took)  # fmt: skip
        child.serving.set(bool(said))
        code = child.popen.wait()
        self.alive.discard(child)
        self.events.put(("exited", (child, code)))

    def _refused(self, child: Child, code: int) -> bool:
        """True if `child` exited with a configuration error: final, not restarted."""
        if (
            code != CONFIG_EXIT
            or child.retiring
            or self.slots[child.index] is not child
        ):
            return False
        log.error(
            "web: process %d (pid %d) exited 2: a configuration error (its message "
            "is above); every process would refuse it the same, so none is "
            "restarted: stopping the others and exiting 2. Fix the setting and "
            "start again", child.index, child.pid,
        )  # fmt: skip
        return True

    def _exited(self, found: tuple[Child, int]) -> None:
        child, code = found
        if child.retiring or self.slots[child.index] is not child:
            return  # stopped on purpose
        self.slots[child.index] = None
        lived = time.monotonic() - child.started
        settled = child.serving.get() and lived >= SETTLED_S
        self.failures[child.index] = 0 if settled else self.failures[child.index] + 1
        failures = self.failures[child.index]
        delay = 0.0 if failures <= 1 else min(BACKOFF_S[0] * 2 ** (failures - 2),
                                              BACKOFF_S[1])  # fmt: skip
        why = "" if child.serving.get() else " before it served"
        row = f" ({failures} in a row)" if failures else ""  # settled: no "0 in a row"
        log.error(
            "web: process %d (pid %d) %s%s, after %.1f s%s; starting another %s",
            child.index, child.pid, exit_text(code), why, lived, row,
            f"in {delay:g} s" if delay else "now",
        )  # fmt: skip
        gevent.spawn_later(delay, self.events.put, ("start", child.index))

    def _pass_on(self, signum: int) -> None:
        for child in list(self.alive):
            if child.popen.poll() is None:
                child.popen.send_signal(signum)

    def _roll(self) -> None:
        """Replace each child in turn: the new one serves before the old one stops."""
        log.info("web: SIGUSR2: replacing %d processes one at a time", len(self.slots))
        began = time.monotonic()
        for index, old in enumerate(self.slots):
            new = self._start(index)
            try:
                serves = new.serving.get(timeout=self.ready_timeout)
            except gevent.Timeout:
                serves = False
            if not serves or self.stopping:
                new.retiring = True
                self._stop([new])
                if not self.stopping:
                    log.error(
                        "web: rolling restart stopped: the new process %d (pid %d) "
                        "did not serve within %.0f s; the old ones keep serving",
                        index, new.pid, self.ready_timeout,
                    )  # fmt: skip
                return
            self.slots[index] = new
            if old is not None and old.popen.poll() is None:
                old.retiring = True
                self._stop([old])
        log.info("web: rolling restart done in %.1f s: pids %s",
                 time.monotonic() - began,
                 ", ".join(str(c.pid) for c in self.slots if c))  # fmt: skip

    def _stop(self, children: list[Child]) -> list[int]:
        """SIGTERM, wait up to stop_timeout, SIGKILL; the exit codes."""
        for child in children:
            if child.popen.poll() is None:
                child.popen.send_signal(signal.SIGTERM)
        codes = []
        deadline = time.monotonic() + self.stop_timeout
        for child in children:
            try:
                code = child.popen.wait(max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                log.error(
                    "web: process %d (pid %d) did not stop within %g s; killing it",
                    child.index, child.pid, self.stop_timeout,
                )  # fmt: skip
                child.popen.kill()
                code = child.popen.wait()
            codes.append(code)
        return codes

    def _stop_all(self) -> int:
        self.stopping = True
        if self.rolling is not None:
            self.rolling.kill()
        children = list(self.alive)
        codes = self._stop(children)
        # A child stopped by SIGTERM before it had installed its handler (still
        # starting) held nothing: that is a clean stop, not a failure.
        bad = [c for c in codes if c not in (0, -signal.SIGTERM)]
        if bad:
            log.error("web: processes exited %s", ", ".join(map(exit_text, bad)))
            return 1
        return 0
