"""The web processes sharing one port, each answering the others' lookups.

A job id starts with the prefix of the process that accepted it. Processes
that share a port (WEB_PROCESSES children and other SO_REUSEPORT webs; the
workers of one gunicorn master) each listen on a unix socket named by that
prefix, in one directory per port under ``$TMPDIR/greenpipe-<uid>`` (0700):
a lookup that lands on another process asks the owner there, in one line
(every sibling, once the owner has gone: its jobs went to whoever adopted them).
A question that lands here is put in `Siblings.questions` for the owner (the
`Pipe`) to answer; nothing here calls up.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import sys
import tempfile
from typing import Any, NamedTuple

import gevent
import gevent.queue
from gevent import socket
from gevent.event import AsyncResult
from gevent.server import StreamServer

from greenpipe.errors import Unavailable

log = logging.getLogger(__name__)

ASK_TIMEOUT_S = 1.0  # a sibling on the same host answers in well under a ms
MAX_LINE = 512  # bytes of a question: "status <id>\n"
MAX_ANSWER = 1 << 20  # bytes; a status record (results over 64 KiB are not kept)
PREFIX = re.compile(r"[0-9a-f]{8}")  # Admission.prefix without its "-"
MAX_UNIX_PATH = 100  # bytes; sun_path holds 108
VERBS = ("status", "cancel")  # what a sibling may ask


class Question(NamedTuple):
    """A sibling's question about one of this process's jobs, to be answered.

    The owner sets `answer` to this process's own record of the job (never
    asking further; None if unknown), or its exception (`Unavailable`: a
    cancel not journaled).
    """

    verb: str  # one of VERBS
    job_id: str
    answer: AsyncResult


def group(settings: Any) -> str | None:
    """The name of the processes sharing this one's port, or None if it shares none.

    greenpipe's own server with REUSE_PORT (WEB_PROCESSES sets it): every web
    bound to the same host and port. Under gunicorn: the workers of one master
    (they share its listening socket).
    """
    if getattr(settings, "reuse_port", False):
        return f"port-{settings.host}-{settings.port}"
    if "gunicorn.arbiter" in sys.modules:  # a gunicorn worker (pipes never run
        return f"gunicorn-{os.getppid()}"  # in the master: pyzmq#1330)
    return None


def _private_dir(path: str) -> bool:
    """Make `path` a directory only this user can enter; False if it is not."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(path)
    return (
        stat.S_ISDIR(info.st_mode)
        and info.st_uid == os.getuid()
        and not info.st_mode & 0o077
    )


class Siblings:
    """This process's socket in its group's directory, and lookups of the others.

    A sibling's question is put in `questions` (a `Question`); the owner
    answers it within ASK_TIMEOUT_S, or the sibling is told nothing. `status`
    and `cancel` ask the process whose prefix a job id carries, or if it has
    gone (its socket missing or refusing), every sibling at once (one of them
    adopted its journal slot): None if none knows the job, `Unavailable` if
    the one asked, or one of those, does not answer within ASK_TIMEOUT_S.
    """

    def __init__(self, directory: str, prefix: str) -> None:
        self.directory = directory
        self.path = os.path.join(directory, prefix.rstrip("-") + ".sock")
        self.questions: gevent.queue.Queue[Question] = gevent.queue.Queue()
        self._server: StreamServer | None = None

    @classmethod
    def join(cls, settings: Any, prefix: str) -> Siblings | None:
        """Listen for lookups if this process shares its port; else None.

        A runtime directory that is not this user's alone, or a path too long
        for a unix socket, is logged and leaves the shared port answering 421.
        """
        name = group(settings)
        if name is None:
            return None
        root = os.path.join(tempfile.gettempdir(), f"greenpipe-{os.getuid()}")
        directory = os.path.join(root, name)
        siblings = cls(directory, prefix)
        try:
            if not (_private_dir(root) and _private_dir(directory)):
                raise OSError(f"{root} is not a 0700 directory of uid {os.getuid()}")
            if len(siblings.path.encode()) > MAX_UNIX_PATH:
                raise OSError(f"{siblings.path} is too long for a unix socket")
            siblings.start()
        except OSError as exc:
            log.warning("web: lookups from processes sharing this port are off (%s); "
                        "they answer 421 for this process's jobs", exc)  # fmt: skip
            return None
        return siblings

    def start(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.path)
        listener.listen(64)
        self._server = StreamServer(listener, self._serve)
        self._server.start()
        log.info("web: pid %d answers its siblings' lookups at %s", os.getpid(),
                 self.path)  # fmt: skip

    def close(self) -> None:
        if self._server is not None:
            self._server.stop(timeout=0)
            self._server = None
            try:
                os.unlink(self.path)
                os.rmdir(self.directory)  # the last one out
            except OSError:
                pass

    def count(self) -> int:
        """How many processes share the port (sockets in the directory)."""
        try:
            return sum(name.endswith(".sock") for name in os.listdir(self.directory))
        except OSError:
            return 1

    def _serve(self, conn: socket.socket, _address: Any) -> None:
        try:
            with gevent.Timeout(ASK_TIMEOUT_S, False):
                question = _read_line(conn, MAX_LINE)
                verb, _, job_id = question.decode("ascii", "replace").partition(" ")
                found = None
                if verb in VERBS:
                    asked = Question(verb, job_id, AsyncResult())
                    self.questions.put(asked)
                    try:
                        found = asked.answer.get()
                    except Unavailable as exc:  # a cancel not journaled: 503 there
                        found = {"unavailable": str(exc)}
                conn.sendall(json.dumps(found).encode() + b"\n")
        except OSError:
            pass  # the asker gave up
        finally:
            conn.close()

    def status(self, job_id: str) -> dict | None:
        """The record of `job_id` from the process that accepted it, or None."""
        return self._ask("status", job_id)

    def cancel(self, job_id: str) -> dict | None:
        """Cancel `job_id` in the process that accepted it: its record, or None."""
        return self._ask("cancel", job_id)

    def _ask(self, verb: str, job_id: str) -> dict | None:
        prefix = job_id.split("-", 1)[0]
        if not PREFIX.fullmatch(prefix):
            return None  # not a job id of this web: no path built from it
        path = os.path.join(self.directory, prefix + ".sock")
        if path == self.path:
            return None
        try:
            return self._ask_at(path, verb, job_id)
        except _Gone:
            pass
        # The process that accepted it has gone (killed, or stopped in a rolling
        # restart): whoever adopted its journal slot holds its jobs now, under
        # their old ids. Ask every sibling at once; the one holding it answers.
        return self._ask_all(verb, job_id, skip={path, self.path})

    def _ask_all(self, verb: str, job_id: str, skip: set[str]) -> dict | None:
        try:
            names = sorted(os.listdir(self.directory))
        except OSError:
            return None
        paths = [os.path.join(self.directory, name) for name in names
                 if name.endswith(".sock")]  # fmt: skip
        asks = [gevent.spawn(self._answer_at, p, verb, job_id)
                for p in paths if p not in skip]  # fmt: skip
        gevent.joinall(asks)
        answers = [ask.value for ask in asks]
        for answer in answers:
            if isinstance(answer, dict):
                return answer
        for answer in answers:
            if isinstance(answer, Unavailable):
                raise answer  # that one may be holding the job
        return None

    def _answer_at(self, path: str, verb: str, job_id: str) -> dict | Exception | None:
        """`_ask_at`, its exception returned (a greenlet's would be printed)."""
        try:
            return self._ask_at(path, verb, job_id)
        except (_Gone, Unavailable) as exc:
            return exc

    def _ask_at(self, path: str, verb: str, job_id: str) -> dict | None:
        """One sibling's answer; `_Gone` if no process listens at `path`."""
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with gevent.Timeout(ASK_TIMEOUT_S):
                conn.connect(path)
                conn.sendall(f"{verb} {job_id}\n".encode("ascii", "replace"))
                answer = _read_line(conn, MAX_ANSWER)
        except (FileNotFoundError, ConnectionRefusedError):
            raise _Gone(path) from None  # no such process, or it has gone
        except (gevent.Timeout, OSError) as exc:
            # A cancel asked may still be made (its record waits for a group
            # commit): asking again is harmless and tells which way it went.
            maybe = " (the cancel may still take effect)" if verb == "cancel" else ""
            raise Unavailable(
                f"a web process sharing this port (asked about job {job_id!r}) "
                f"did not answer within {ASK_TIMEOUT_S:g} s ({exc}){maybe}; ask again",
                retry_after=1,
            ) from None
        finally:
            conn.close()
        found = json.loads(answer) if answer else None
        if isinstance(found, dict) and "unavailable" in found:
            raise Unavailable(str(found["unavailable"]), retry_after=2)
        return found if isinstance(found, dict) else None


class _Gone(Exception):
    """No process listens at a sibling's socket (a stale file, or none)."""


def _read_line(conn: socket.socket, limit: int) -> bytes:
    data = bytearray()
    while not data.endswith(b"\n") and len(data) < limit:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return bytes(data).strip()
