"""The dead-letter file: jobs the web gave up on, one JSON object per line."""

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
        that asks once a second.
        """
        try:
            with open(self.path, "rb") as file:
                size = file.seek(0, os.SEEK_END)
                file.seek(max(0, size - scan))
                lines = file.read().splitlines()[-count:]
        except OSError:
            return []
        out = []
        for line in reversed(lines):
            try:
                record = json.loads(line)
            except ValueError:  # the first, cut line of the window, or damage
                continue
            if isinstance(record, dict):
                record.pop("body", None)
                record.pop("body_base64", None)
                out.append(record)
        return out

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
