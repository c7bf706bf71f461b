"""A page in headless Chromium that a test can act on: type, click, read.

``--dump-dom`` (tests.support.render) shows what a page draws; a button's
effect needs a click. This drives Chromium over its DevTools protocol: one
WebSocket (RFC 6455, written here: text frames, client-masked, no
extensions), ``Runtime.evaluate`` for each step. Only what the tests need.

    with Page(url) as page:
        page.wait_for("document.body.dataset.updates >= 1", "the first poll")
        page.run("document.querySelector('button').click()")
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request
from typing import Any

from tests.support import chromium

STARTED = re.compile(r"DevTools listening on (ws://[^\s]+)")


class Page:
    """One tab of a headless Chromium of its own, on `url`; closed on exit."""

    def __init__(self, url: str, timeout: float = 20.0) -> None:
        self.url, self.timeout = url, timeout
        self._proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._profile = tempfile.TemporaryDirectory(prefix="greenpipe-chromium-")
        self._next = 0

    def __enter__(self) -> Page:
        browser = chromium()
        assert browser, "chromium is not installed (apt-get install chromium)"
        self._proc = subprocess.Popen(
            [browser, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", "--no-first-run", "--remote-debugging-port=0",
             f"--user-data-dir={self._profile.name}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self._proc.stderr is not None
        deadline = time.monotonic() + self.timeout
        for line in self._proc.stderr:
            found = STARTED.search(line)
            if found:
                break
            assert time.monotonic() < deadline, "Chromium's DevTools did not listen"
        else:
            raise AssertionError("Chromium exited before its DevTools listened")
        host = found[1].split("/")[2]
        request = urllib.request.Request(
            f"http://{host}/json/new?{self.url}", method="PUT"
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as answer:
            target = json.load(answer)
        self._connect(target["webSocketDebuggerUrl"])
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._sock is not None:
            self._sock.close()
        if self._proc is not None:
            self._proc.terminate()  # ours, by its PID: it closes its own children
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
            if self._proc.stderr is not None:
                self._proc.stderr.close()
        self._profile.cleanup()

    # -- what a test does ------------------------------------------------------

    def run(self, expression: str) -> Any:
        """Evaluate `expression` in the page (a promise is awaited); its value."""
        answer = self._call("Runtime.evaluate", expression=expression,
                            awaitPromise=True, returnByValue=True)  # fmt: skip
        if "exceptionDetails" in answer:
            raise AssertionError(f"{expression!r} raised in the page: {answer}")
        return answer["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout: float = 10.0) -> Any:
        """Poll `expression` until it is truthy; its value. Fails naming `what`."""
        deadline, error = time.monotonic() + timeout, ""
        while True:
            try:  # a page still loading has no body yet: not yet, not a failure
                value = self.run(expression)
            except AssertionError as exc:
                value, error = None, f"; it last raised {str(exc)[:300]}"
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{what}: not within {timeout} s ({expression}){error}"
                )
            time.sleep(0.05)  # sleep-ok: the poll's pace, bounded by the deadline

    # -- the protocol ------------------------------------------------------------

    def _call(self, method: str, **params: Any) -> dict:
        self._next += 1
        self._send(json.dumps({"id": self._next, "method": method, "params": params}))
        while True:  # events come in between: wait for our answer
            message = json.loads(self._receive())
            if message.get("id") == self._next:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message["result"]

    def _connect(self, url: str) -> None:
        host, _, path = url.removeprefix("ws://").partition("/")
        name, _, port = host.partition(":")
        sock = socket.create_connection((name, int(port)), timeout=self.timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            f"GET /{path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(1)
            assert chunk, "DevTools closed the connection during the handshake"
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head
        self._sock = sock

    def _send(self, text: str) -> None:
        payload, mask = text.encode(), os.urandom(4)
        size = len(payload)
        if size < 126:
            head = struct.pack("!BB", 0x81, 0x80 | size)
        elif size < 1 << 16:
            head = struct.pack("!BBH", 0x81, 0x80 | 126, size)
        else:
            head = struct.pack("!BBQ", 0x81, 0x80 | 127, size)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        assert self._sock is not None
        self._sock.sendall(head + mask + masked)

    def _receive(self) -> str:
        parts = []
        while True:
            first, second = self._exactly(2)
            size = second & 0x7F
            if size == 126:
                size = struct.unpack("!H", self._exactly(2))[0]
            elif size == 127:
                size = struct.unpack("!Q", self._exactly(8))[0]
            parts.append(self._exactly(size))  # a server's frames are not masked
            if first & 0x80:  # FIN: the message is whole
                return b"".join(parts).decode()

    def _exactly(self, count: int) -> bytes:
        assert self._sock is not None
        data = b""
        while len(data) < count:
            chunk = self._sock.recv(count - len(data))
            assert chunk, "DevTools closed the connection"
            data += chunk
        return data
