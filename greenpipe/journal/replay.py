"""Reading a journal's folders back: what is owed, and what was wrong on disk.

`Reader` reads a slot's keys file and segments into a `Found` (a torn tail cut
off with a warning; damage salvaged, or refused with JOURNAL_CORRUPT=refuse);
`owed` then settles what the records say across this slot and the adopted ones.
Replay deduplicates by job id, so a crash during a carry or an adoption replays
each job once.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

from greenpipe.errors import JournalError
from greenpipe.jobs import Envelope
from greenpipe.journal.files import replace_file
from greenpipe.journal.owed import Owed, Segment
from greenpipe.journal.segments import (
    ACK,
    CANCEL,
    JOB_KINDS,
    KEY,
    KEYS_V1,
    LATER,
    SENT,
    decode_job,
    decode_key,
    decode_keys_v1,
    decode_later,
    decode_segment,
    decode_sent,
    record,
)
from greenpipe.journal.slots import KEYS_FILE, segment_name, segment_numbers

log = logging.getLogger("greenpipe.journal")

Keys = dict[str, tuple[str, float]]  # idempotency key -> (job id, wall time)


@dataclass
class Replay:
    """What opening a journal found: the jobs still owed, and what was wrong."""

    jobs: list[Envelope] = field(default_factory=list)
    keys: Keys = field(default_factory=dict)  # each with its own wall time
    torn: int = 0  # torn tails cut off
    salvaged: int = 0  # damaged segments moved aside
    adopted: list[int] = field(default_factory=list)  # orphaned slots taken over


@dataclass
class Found:
    """What reading the segments of one or more slots found (`Reader.read_slot`)."""

    jobs: dict[str, tuple[Envelope, int, str, float, int]] = field(default_factory=dict)
    settled: set[str] = field(default_factory=set)  # acknowledged or cancelled
    cancelled: set[str] = field(default_factory=set)  # answered 503: never a job
    # job id -> deliveries after its last JOB record (SENT mentions)
    sent: dict[str, int] = field(default_factory=dict)
    # job id -> (not-before wall time, retries, attempt) from its last LATER record
    later: dict[str, tuple[float, int, int]] = field(default_factory=dict)
    segments: dict[int, Segment] = field(default_factory=dict)


class Reader:
    """Reads slot folders back (see the module docstring)."""

    def __init__(self, corrupt: str = "salvage", sync: str = "none") -> None:
        self.corrupt = corrupt
        self.sync = sync

    def read_slot(self, folder: str, found: Found, replay: Replay) -> None:
        keys = replay.keys
        for kind, payload in self.read(os.path.join(folder, KEYS_FILE), replay):
            if kind == KEY:
                key, job_id, at = decode_key(payload)
                newer(keys, key, job_id, at)
        for number in segment_numbers(folder):
            path = os.path.join(folder, segment_name(number))
            segment = found.segments[number] = Segment(os.path.getsize(path))
            for kind, payload in self.read(path, replay):
                if kind in JOB_KINDS:
                    job, key, at = decode_job(kind, payload)
                    if key:
                        segment.keyed = True
                        at = time.time() if at < 0 else at  # JOB_V1: no time kept
                        newer(keys, key, job.id, at)
                    size = len(payload) + 9
                    found.jobs[job.id] = (job, number, key, at, size)
                    found.sent.pop(job.id, None)  # its attempt counts those before
                elif kind in (ACK, CANCEL):
                    ids = [raw.decode("ascii", "replace") for raw in payload.split()]
                    found.settled.update(ids)
                    if kind == CANCEL:
                        found.cancelled.update(ids)
                elif kind == SENT:
                    sent = found.sent
                    for job_id in decode_sent(payload):
                        sent[job_id] = sent.get(job_id, 0) + 1
                elif kind == LATER:
                    for job_id, not_before, retries, attempt in decode_later(payload):
                        found.later[job_id] = (not_before, retries, attempt)
                elif kind == KEYS_V1:
                    segment.keyed = True
                    for key, job_id, at in decode_keys_v1(payload):
                        newer(keys, key, job_id, at)

    def read(self, path: str, replay: Replay) -> list[tuple[int, bytes]]:
        """The records of a file ([] if absent), its torn tail cut, damage handled."""
        try:
            with open(path, "rb") as file:
                data = file.read()
        except FileNotFoundError:
            return []
        records, end, damaged = decode_segment(data)
        if damaged:
            self.salvage(path, data, end, records, replay)
        elif end < len(data):
            replay.torn += 1
            log.warning(
                "journal: %s ends in a torn record (%d bytes after offset %d, from a "
                "crash while writing); cut off, the %d bytes before it replayed",
                path, len(data) - end, end, end,
            )  # fmt: skip
            fd = os.open(path, os.O_WRONLY)
            try:
                os.ftruncate(fd, end)
            finally:
                os.close(fd)
        return records

    def salvage(self, path: str, data: bytes, end: int,
                 records: list[tuple[int, bytes]], replay: Replay) -> None:  # fmt: skip
        if self.corrupt == "refuse":
            raise JournalError(
                f"journal: {path} is damaged (bad bytes with readable records after "
                "them, not a torn tail); move it aside by hand, or start with "
                "JOURNAL_CORRUPT=salvage to replay what can be read"
            )
        replay.salvaged += 1
        aside = f"{path}.damaged-{int(time.time())}"
        log.error(
            "journal: %s is damaged at offset %d with readable records after it; "
            "replaying the %d records that can be read, kept the file as %s",
            path, first_bad(data, records), len(records), aside,
        )  # fmt: skip
        # The clean copy replaces the file in one rename: a crash meanwhile
        # leaves the damaged file, salvaged again at the next start.
        clean = b"".join(record(kind, payload) for kind, payload in records)
        if not os.path.exists(aside):
            os.link(path, aside)
        replace_file(path, clean, self.sync == "batch")


def owed(own: Found, theirs: Found, replay: Replay) -> list[Owed]:
    """Settle what was read: this slot's owed jobs go into `own.segments` and
    `replay.jobs`; the adopted ones (not in this slot) are returned, to carry.

    A cancelled job's key is dropped (answered 503: never a job); a job sent
    before the crash comes back as its next attempt, and one that waited waits on.
    """
    settled = own.settled | theirs.settled
    for cancelled in own.cancelled | theirs.cancelled:
        for key, (job_id, _) in list(replay.keys.items()):
            if job_id == cancelled:
                del replay.keys[key]
    for found in (own, theirs):
        for job_id, (job, *_) in found.jobs.items():
            job.attempt += found.sent.get(job_id, 0)
            waits = found.later.get(job_id)
            if waits is not None:
                job.not_before, job.retries = waits[0], waits[1]
                job.attempt = max(job.attempt, waits[2])
    for job_id, (job, number, key, at, size) in own.jobs.items():
        if job_id not in settled:
            job.segment = number
            own.segments[number].owed[job_id] = Owed(job, size, key, at)
            replay.jobs.append(job)
    return [
        Owed(job, size, key, at)
        for job_id, (job, _, key, at, size) in theirs.jobs.items()
        if job_id not in settled and job_id not in own.jobs
    ]


def newer(keys: Keys, key: str, job_id: str, at: float) -> None:
    """Keep the newest mapping of `key` (a key is reused only after its window)."""
    if key not in keys or keys[key][1] <= at:
        keys[key] = (job_id, at)


def first_bad(data: bytes, records: list[tuple[int, bytes]]) -> int:
    """Offset of the first byte not in a readable record (for the error message)."""
    offset = 0
    for kind, payload in records:
        if data[offset : offset + 9 + len(payload)] != record(kind, payload):
            return offset
        offset += 9 + len(payload)
    return offset
