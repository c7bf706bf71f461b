"""The dead-letter file: jobs that failed for good, one JSON object per line.

Each record's ``status`` says which: ``dead`` (given up on: retries spent,
MAX_DELIVERIES deliveries, a retry refused, no worker runs its name, or a
web stopping with it owed and no journal) or ``failed`` (its handler failed
and it had no retry policy). A record carries the request, so the job can be
re-sent. Records written before greenpipe kept failures have no ``status``:
they are dead.

A re-send (the dashboard's button, ``pipe.resend``, ``greenpipe jobs
resend``) is marked in the same file, by a line ``{"resent": <dead id>,
"as": <job id>}`` appended in one write: the first such line for a dead
letter names its one re-sent job, whichever of the web processes sharing the
file is asked, then or later.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from greenpipe.jobs import DEFAULT_QUEUE, Envelope, queue_name

if TYPE_CHECKING:
    from greenpipe.link import Link

_MAY_RUN = "web stopped before it was acknowledged (it may still be handled)"

log = logging.getLogger(__name__)


class DeadLetters:
    """Appends a record per job: enough to see why, and to replay it by hand.

    Each record is written and flushed on its own line, so a crash loses at most
    the record being written. If the file cannot be written, the record goes to
    the log at ERROR instead of disappearing.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.count = 0

    def write(
        self, job: Envelope, reason: str, worker: str, status: str = "dead"
    ) -> None:
        """Keep `job` (``status`` dead, or failed: its handler failed, no policy)."""
        if status == "dead":
            self.count += 1  # /stats dead_lettered; a failure is counted as failed
        record = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "id": job.id,
            "status": status,
            "attempts": job.attempt,
            "last_worker": worker,
            "reason": reason,
            "runs": job.retries + 1,
            "errors": job.errors,  # why each of its last runs failed (retries)
            "name": job.name.decode("utf-8", "replace"),
            "method": job.method.decode("ascii"),
            "path": job.path.decode("utf-8", "replace"),
            "query": job.query.decode("latin-1"),
            "content_type": job.content_type.decode("latin-1"),
        }
        if job.queue != DEFAULT_QUEUE:  # a re-send goes to the same queue
            record["queue"] = job.queue.decode("ascii")
        try:
            record["body"] = job.body.decode("utf-8")
        except UnicodeDecodeError:
            record["body_base64"] = base64.b64encode(job.body).decode("ascii")
        try:
            self._append([record])
        except OSError as exc:
            log.error(
                "cannot write dead letter to %s (%s); the record: %s",
                self.path,
                exc,
                json.dumps(record),
            )
            return
        if status == "dead":
            log.warning("job %s dead-lettered to %s: %s", job.id, self.path, reason)
        else:  # the worker logged the error; one line per failure is enough
            log.debug("job %s failed; kept in %s", job.id, self.path)

    def at_stop(self, queued: Iterable[Envelope], links: Iterable[Link]) -> int:
        """A web stopping without a journal: write each job it still owes, once.

        `queued` never left the web; what `links` hold was sent and may still
        be handled (at least once, not exactly). Their tables are emptied.
        """
        count = 0
        for job in queued:
            self.write(job, "web stopped before a worker took it", "")
            count += 1
        for link in links:
            for job in link.jobs.values():
                self.write(job, _MAY_RUN, link.name)
                count += 1
            link.jobs.clear()
        return count

    def tail(self, count: int, scan: int = 64 << 10) -> list[dict]:
        """The last `count` kept (newest first), without their bodies.

        Reads at most the file's last `scan` bytes: cheap enough for a page
        that asks once a second. A record re-sent (marked within that window)
        says ``resent_as``: the job it was re-sent as.
        """
        try:
            with open(self.path, "rb") as file:
                size = file.seek(0, os.SEEK_END)
                file.seek(max(0, size - scan))
                lines = file.read().splitlines()
        except OSError:
            return []
        out: list[dict] = []
        claims = _Claims()
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:  # the first, cut line of the window, or damage
                continue
            if isinstance(record, dict) and not claims.read(record):
                record.setdefault("status", "dead")
                record["name"] = job_name(record)
                record.pop("body", None)
                record.pop("body_base64", None)
                out.append(record)
        out = out[-count:]
        for record in out:
            resent = claims.first(record.get("id"))
            if resent:
                record["resent_as"] = resent
        return out[::-1]

    def resent_as(self, dead_id: str) -> str | None:
        """The job `dead_id` was re-sent as (the first claim standing), or None."""
        return self._claims(dead_id).first(dead_id)

    def claim(self, dead_id: str, job_id: str) -> str:
        """Mark `dead_id` re-sent as `job_id`; the job it is re-sent as.

        That is `job_id` if this claim is the first standing one, else the
        earlier claim's job (another process, or click, was first; this
        claim is withdrawn). One append, then a read: processes sharing the
        file agree on the first line. Raises OSError if it cannot be written.
        """
        self._append([{"resent": dead_id, "as": job_id, "pid": os.getpid()}])
        first = self.resent_as(dead_id)
        if first != job_id:
            self.withdraw(dead_id, job_id)
        return first or job_id

    def claim_many(
        self, pairs: Sequence[tuple[str, str]], scan: Scan | None = None
    ) -> dict[str, str]:
        """`claim` for each (dead id, job id), in one append and one read.

        Returns each dead id's job: its job id where the claim is the first
        standing one, else the earlier claim's (this one withdrawn). `scan`:
        the file as read so far, read on from where it ended (not again from
        the start). Raises OSError if the claims cannot be written (each
        struck, as far as the disk lets).
        """
        pid = os.getpid()
        try:
            self._append([{"resent": d, "as": j, "pid": pid} for d, j in pairs])
        except OSError:
            self.withdraw_many(pairs)  # a short write may have left some standing
            raise
        if scan is None:
            scan = self.scan()
        else:
            scan.more()
        firsts = {dead: scan.claims.first(dead) for dead, _ in pairs}
        if None in firsts.values():  # not even our own mark read back
            self.withdraw_many(pairs)
            raise OSError(
                f"the marks just written to {self.path} were not read back (the "
                "file was moved or replaced meanwhile?)"
            )
        lost = [(dead, job) for dead, job in pairs if firsts[dead] != job]
        if lost:
            self.withdraw_many(lost)
        return firsts  # type: ignore[return-value]  # no None: checked above

    def confirm_many(self, pairs: Sequence[tuple[str, str]]) -> None:
        """Each (dead id, job id) was submitted (journaled): `again` leaves it."""
        try:
            self._append([{"sent": dead, "as": job} for dead, job in pairs])
        except OSError as exc:
            log.error("cannot mark %d re-sends as submitted in %s (%s); resend "
                      "--again asks the webs and the result store about them",
                      len(pairs), self.path, exc)  # fmt: skip

    def withdraw(self, dead_id: str, job_id: str) -> None:
        """The re-send claimed as `job_id` did not happen (a 503): strike it."""
        self.withdraw_many([(dead_id, job_id)])

    def withdraw_many(self, pairs: Sequence[tuple[str, str]]) -> None:
        try:
            self._append([{"withdrawn": dead, "as": job} for dead, job in pairs])
        except OSError as exc:
            log.error("cannot strike the re-send of %s from %s (%s): each reads "
                      "as re-sent; re-send them again with again=True",
                      ", ".join(f"{d} as {j}" for d, j in pairs[:10]), self.path,
                      exc)  # fmt: skip

    def _append(self, records: list[dict]) -> None:
        """Append `records` in one write: appends of processes never interleave.

        A line left cut by an earlier failed write is ended first (else this
        record would be glued to it and read as damage); a write cut short
        (a full disk) ends its own cut line if it can, then raises OSError.
        """
        data = "".join(json.dumps(record) + "\n" for record in records).encode()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data
            view = memoryview(data)
            try:
                while view:  # a short write leaves the rest: finish it
                    view = view[os.write(fd, view) :]
            except OSError:
                if len(view) < len(data):  # part written: end its line
                    with contextlib.suppress(OSError):
                        os.write(fd, b"\n")
                raise
        finally:
            os.close(fd)

    def scan(self) -> Scan:
        """The whole file read: every job kept and the marks (see `Scan`)."""
        scan = Scan(self.path)
        scan.more()
        return scan

    def read(self) -> tuple[dict[str, dict], _Claims]:
        """Every job kept (id -> its last record, in file order) and the marks."""
        scan = self.scan()
        return scan.records, scan.claims

    def kept(self, name: str | None = None, status: str | None = None) -> list[dict]:
        """The jobs kept (oldest first), without bodies, by name and status.

        A forwarded request's name is its path (``/jobs``), as in its status.
        Each says ``resent_as`` once re-sent: the job it was re-sent as.
        Raises OSError if the file exists and cannot be read.
        """
        records, claims = self.read()
        out = []
        for job_id, record in records.items():
            record = dict(record, name=job_name(record))
            if name is not None and job_name(record) != name:
                continue
            if status is not None and record["status"] != status:
                continue
            body = record.pop("body", None)
            encoded = record.pop("body_base64", None)
            record["body_bytes"] = (
                len(body.encode()) if body is not None
                else len(base64.b64decode(encoded or ""))
            )  # fmt: skip
            resent = claims.first(job_id)
            if resent:
                record["resent_as"] = resent
            out.append(record)
        return out

    def _claims(self, dead_id: str) -> _Claims:
        claims = _Claims()
        needle = json.dumps(dead_id).encode()
        try:
            with open(self.path, "rb") as file:
                for line in file:
                    if needle in line:
                        try:
                            record = json.loads(line)
                        except ValueError:
                            continue
                        if isinstance(record, dict):
                            claims.read(record)
        except OSError:
            pass
        return claims

    def find(self, job_id: str) -> Envelope | None:
        """The last record for `job_id` as a new job (no id yet), to submit again.

        None if the file has no record of it.
        """
        record = None
        needle = json.dumps(job_id).encode()
        try:
            with open(self.path, "rb") as file:
                for line in file:
                    if needle in line:  # cheap; then parse to be sure
                        try:
                            parsed = json.loads(line)
                        except ValueError:
                            continue
                        if isinstance(parsed, dict) and parsed.get("id") == job_id:
                            record = parsed
        except OSError:
            return None
        return None if record is None else envelope(record)


def job_name(record: dict) -> str:
    """A kept job's name: as pushed, or a forwarded request's path (as its status)."""
    return str(record.get("name") or record.get("path") or "")


def envelope(record: dict) -> Envelope:
    """A kept record's request as a new job (no id yet), to submit again."""
    if "body_base64" in record:
        body = base64.b64decode(record["body_base64"])
    else:
        body = record.get("body", "").encode("utf-8")
    job = Envelope(
        "",
        record["method"].encode("ascii"),
        record["path"].encode("utf-8"),
        record["query"].encode("latin-1"),
        record["content_type"].encode("latin-1"),
        body,
        name=record.get("name", "").encode("utf-8"),
    )
    if "queue" in record:  # a hand-edited file: a bad name is a clear error
        job.queue = queue_name(record["queue"])
    return job


class Scan:
    """The dead-letter file as read so far: its records and marks, and where
    the reading stopped, so that it reads on (`more`) after an append.

    The whole file, bodies included: for a re-send or a listing, not for a
    page polling once a second (`DeadLetters.tail`). Raises OSError if the
    file exists and cannot be read.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.records: dict[str, dict] = {}  # job id -> its last record
        self.claims = _Claims()
        self.offset = 0
        self.inode = -1

    def more(self) -> None:
        """Read on from where the last read stopped; a file replaced since
        (moved aside, a new one made) or shorter is read from its start."""
        try:
            with open(self.path, "rb") as file:
                facts = os.fstat(file.fileno())
                if facts.st_ino != self.inode or facts.st_size < self.offset:
                    self.records, self.claims, self.offset = {}, _Claims(), 0
                    self.inode = facts.st_ino
                file.seek(self.offset)
                data = file.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1  # a line being written is read next time
        self.offset += end
        for line in data[:end].splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line cut by a crash, or damage
                continue
            if isinstance(record, dict) and not self.claims.read(record):
                job_id = str(record.get("id"))
                self.records.pop(job_id, None)  # the last record stands
                record.setdefault("status", "dead")
                self.records[job_id] = record


class _Claims:
    """Re-send marks read in file order: per dead letter, the claims standing."""

    def __init__(self) -> None:
        self._claims: dict[str, list[str]] = {}
        self._withdrawn: set[tuple[str, str]] = set()
        self.sent: set[tuple[str, str]] = set()  # (dead id, job id) journaled

    def read(self, record: dict) -> bool:
        """Note `record` if it is a mark; False if it is a dead letter."""
        if "resent" in record:
            self._claims.setdefault(str(record["resent"]), []).append(
                str(record.get("as"))
            )
            return True
        if "withdrawn" in record:
            self._withdrawn.add((str(record["withdrawn"]), str(record.get("as"))))
            return True
        if "sent" in record:
            self.sent.add((str(record["sent"]), str(record.get("as"))))
            return True
        return False

    def first(self, dead_id: object) -> str | None:
        for job_id in self._claims.get(str(dead_id), ()):
            if (str(dead_id), job_id) not in self._withdrawn:
                return job_id
        return None
