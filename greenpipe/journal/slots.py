"""A journal's folders: slots and their locks, adoption, and reading them back.

A slot is a folder of segment files and a keys file, held by one web
process through an exclusive ``flock`` on ``slot-N.lock``. `Slots` takes a
free slot, finds orphans (slots no live process holds), renames what it
adopts to ``adopted-...-by-N`` so no other process can take it as its own,
and reads slots back: torn tails cut, damage salvaged or refused (see
`greenpipe.journal.log`, which writes).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gevent

from greenpipe.errors import ConfigError, GreenpipeError
from greenpipe.jobs import Envelope
from greenpipe.journal.segments import (
    ACK,
    CANCEL,
    JOB,
    JOB_V1,
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

log = logging.getLogger("greenpipe.journal")

MAX_SLOTS = 64
KEYS_FILE = "keys"

Keys = dict[str, tuple[str, float]]  # idempotency key -> (job id, wall time)


class JournalError(GreenpipeError):
    """The journal cannot be written; jobs are refused (503) until it can."""


@dataclass
class Replay:
    """What opening a journal found: the jobs still owed, and what was wrong."""

    jobs: list[Envelope] = field(default_factory=list)
    keys: Keys = field(default_factory=dict)  # each with its own wall time
    torn: int = 0  # torn tails cut off
    salvaged: int = 0  # damaged segments moved aside
    adopted: list[int] = field(default_factory=list)  # orphaned slots taken over


@dataclass
class Owed:
    job: Envelope
    size: int  # bytes of its record
    key: str
    at: float


@dataclass
class Segment:
    size: int = 0
    owed: dict[str, Owed] = field(default_factory=dict)
    keyed: bool = False  # holds a JOB record with a key

    def due_bytes(self, now: float) -> int:
        """Bytes of the owed jobs but those waiting past `now` (see the journal)."""
        return sum(entry.size for entry in self.owed.values()
                   if entry.job.not_before <= now)  # fmt: skip


@dataclass
class Found:
    """What reading the segments of one or more slots found (see `Slots.read_slot`)."""

    jobs: dict[str, tuple[Envelope, int, str, float, int]] = field(default_factory=dict)
    settled: set[str] = field(default_factory=set)  # acknowledged or cancelled
    cancelled: set[str] = field(default_factory=set)  # answered 503: never a job
    # job id -> deliveries after its last JOB record (SENT mentions)
    sent: dict[str, int] = field(default_factory=dict)
    # job id -> (not-before wall time, retries, attempt) from its last LATER record
    later: dict[str, tuple[float, int, int]] = field(default_factory=dict)
    segments: dict[int, Segment] = field(default_factory=dict)


def offload(function: Callable[..., Any], *args: Any) -> Any:
    """Run a call that may stall (a sync) in gevent's thread pool (see module)."""
    return gevent.get_hub().threadpool.apply(function, args)


class Slots:
    """The slots of one journal directory (see the module docstring)."""

    def __init__(self, directory: str, corrupt: str = "salvage", sync: str = "none"):
        self.directory = directory
        self.corrupt = corrupt
        self.sync = sync

    def slot_dir(self, slot: int) -> str:
        return os.path.join(self.directory, f"slot-{slot}")

    def holds_jobs(self, folder: str) -> bool:
        return os.path.isdir(folder) and (
            bool(self.numbers(folder))
            or os.path.exists(os.path.join(folder, KEYS_FILE))
        )

    def adoptions(self, slot: int) -> list[str]:
        """Folders an adoption by `slot` renamed and had not removed yet."""
        suffix = f"-by-{slot}"
        return sorted(
            os.path.join(self.directory, name)
            for name in os.listdir(self.directory)
            if name.startswith("adopted-") and name.endswith(suffix)
        )

    def mark_adopted(self, folder: str, slot: int) -> str:
        """Rename `folder` to "adopted-<what>-by-<slot>", durably; its new path."""
        name = os.path.basename(folder)
        if name.endswith(f"-by-{slot}"):
            return folder  # ours already (a crash of this slot's last owner)
        what = name.removeprefix("adopted-").rsplit("-by-", 1)[0]
        target = os.path.join(
            self.directory, f"adopted-{what}.{time.time_ns()}-by-{slot}"
        )
        os.rename(folder, target)
        folder_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(folder_fd)  # at start, before serving: on the loop is fine
        finally:
            os.close(folder_fd)
        return target

    def lock(self, slot: int) -> int:
        """The slot's lock fd if this process could take it, else -1."""
        return lock_file(os.path.join(self.directory, f"slot-{slot}.lock"))

    def take(self) -> tuple[int, int]:
        for slot in range(MAX_SLOTS):
            fd = self.lock(slot)
            if fd >= 0:
                return slot, fd
        raise ConfigError(
            f"JOURNAL_DIR: all {MAX_SLOTS} slots of {self.directory!r} are held by "
            "running web processes; stop some, or give this one its own JOURNAL_DIR"
        )

    @staticmethod
    def numbers(folder: str) -> list[int]:
        numbers = []
        for name in os.listdir(folder):
            if name.startswith("seg-") and name.endswith(".log"):
                try:
                    numbers.append(int(name[4:-4]))
                except ValueError:
                    continue
        return sorted(numbers)

    def read_slot(self, folder: str, found: Found, replay: Replay) -> None:
        keys = replay.keys
        for kind, payload in self.read(os.path.join(folder, KEYS_FILE), replay):
            if kind == KEY:
                key, job_id, at = decode_key(payload)
                newer(keys, key, job_id, at)
        for number in self.numbers(folder):
            path = os.path.join(folder, f"seg-{number:08d}.log")
            segment = found.segments[number] = Segment(os.path.getsize(path))
            for kind, payload in self.read(path, replay):
                if kind in (JOB, JOB_V1):
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

    def remove_slot(self, folder: str) -> None:
        """An adopted slot's files, oldest segment first (see the module docstring)."""
        names = [f"seg-{number:08d}.log" for number in self.numbers(folder)]
        for name in [*names, KEYS_FILE, KEYS_FILE + ".tmp"]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(folder, name))


def lock_file(path: str) -> int:
    """An exclusive ``flock`` on `path` (made if need be): its fd, or -1 if held.

    Held until the fd is closed or the process ends (a kill -9 too).
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return -1
    return fd


def replace_file(path: str, data: bytes, sync: bool) -> None:
    """Replace `path` by `data` atomically: a temporary file, sync, rename."""
    temporary = path + ".tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        if os.write(fd, data) != len(data):
            raise OSError(errno.ENOSPC, f"short write to {temporary}")
        if sync:
            offload(os.fdatasync, fd)
    finally:
        os.close(fd)
    os.rename(temporary, path)
    if sync:
        folder = os.open(os.path.dirname(path), os.O_RDONLY)
        try:
            offload(os.fsync, folder)
        finally:
            os.close(folder)


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
