"""The dead-letter file: jobs the web gave up on, one JSON object per line."""

from __future__ import annotations

import base64
import json
import logging
import time

from greenpipe.jobs import Envelope

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
