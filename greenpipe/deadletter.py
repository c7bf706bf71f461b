"""The dead-letter file: jobs the web gave up on, one JSON object per line.

A re-send (the dashboard's button) is marked in the same file, by a line
``{"resent": <dead id>, "as": <job id>}`` appended in one write: the first
such line for a dead letter names its one re-sent job, whichever of the web
processes sharing the file is asked, then or later.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from greenpipe.jobs import Envelope

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

    def write(self, job: Envelope, reason: str, worker: str) -> None:
        self.count += 1
        record = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "id": job.id,
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
        try:
            record["body"] = job.body.decode("utf-8")
        except UnicodeDecodeError:
            record["body_base64"] = base64.b64encode(job.body).decode("ascii")
        line = json.dumps(record) + "\n"
        try:
            with open(self.path, "a", encoding="utf-8") as file:
                file.write(line)
        except OSError as exc:
            log.error(
                "cannot write dead letter to %s (%s); the record: %s",
                self.path,
                exc,
                line,
            )
            return
        log.warning("job %s dead-lettered to %s: %s", job.id, self.path, reason)

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
        """The last `count` records (newest first), without their bodies.

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
        self._append({"resent": dead_id, "as": job_id, "pid": os.getpid()})
        first = self.resent_as(dead_id)
        if first != job_id:
            self.withdraw(dead_id, job_id)
        return first or job_id

    def withdraw(self, dead_id: str, job_id: str) -> None:
        """The re-send claimed as `job_id` did not happen (a 503): strike it."""
        try:
            self._append({"withdrawn": dead_id, "as": job_id})
        except OSError as exc:
            log.error("cannot strike the re-send of %s as %s from %s (%s): the "
                      "dead letter reads as re-sent; re-send it by hand",
                      dead_id, job_id, self.path, exc)  # fmt: skip

    def _append(self, record: dict) -> None:
        line = (json.dumps(record) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)  # one write: appends of processes never interleave
        finally:
            os.close(fd)

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
        if record is None:
            return None
        if "body_base64" in record:
            body = base64.b64decode(record["body_base64"])
        else:
            body = record.get("body", "").encode("utf-8")
        return Envelope(
            "",
            record["method"].encode("ascii"),
            record["path"].encode("utf-8"),
            record["query"].encode("latin-1"),
            record["content_type"].encode("latin-1"),
            body,
            name=record.get("name", "").encode("utf-8"),
        )


class _Claims:
    """Re-send marks read in file order: per dead letter, the claims standing."""

    def __init__(self) -> None:
        self._claims: dict[str, list[str]] = {}
        self._withdrawn: set[tuple[str, str]] = set()

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
        return False

    def first(self, dead_id: object) -> str | None:
        for job_id in self._claims.get(str(dead_id), ()):
            if (str(dead_id), job_id) not in self._withdrawn:
                return job_id
        return None
