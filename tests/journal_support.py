"""Jobs and reopenings for the journal's fast tests (a real `Journal` on tmp_path)."""

from __future__ import annotations

import os
from pathlib import Path

from greenpipe.jobs import Envelope
from greenpipe.journal import Journal


def make_jobs(count: int, start: int = 0, pad: int = 0) -> list[Envelope]:
    """Jobs "c-00000", ... (attempt 1), each body `pad` spaces longer."""
    jobs = []
    for i in range(start, start + count):
        job = Envelope(f"c-{i:05d}", b"POST", b"/jobs", b"", b"application/json",
                       b'{"n": %d}' % i + b" " * pad)  # fmt: skip
        job.attempt = 1
        jobs.append(job)
    return jobs


def make_named_jobs(count: int, start: int = 0) -> list[Envelope]:
    """Jobs "t-0000", ... with a query, every other one named "welcome"."""
    jobs = []
    for i in range(start, start + count):
        job = Envelope(f"t-{i:04d}", b"POST", b"/jobs", b"a=1", b"application/json",
                       b'{"n": %d}' % i, None, b"welcome" if i % 2 else b"")  # fmt: skip
        job.attempt = 1
        jobs.append(job)
    return jobs


def reopened(directory: Path, **kwargs) -> tuple[list[str], dict]:
    """Open the journal again and close it: (the ids replayed, sorted; the keys)."""
    journal = Journal(str(directory), **kwargs)
    replay = journal.open()
    journal.close()
    return sorted(job.id for job in replay.jobs), replay.keys


def reopened_jobs(directory: Path) -> dict[str, Envelope]:
    """Open the journal again and close it: the jobs replayed, by id."""
    journal = Journal(str(directory))
    jobs = {job.id: job for job in journal.open().jobs}
    journal.close()
    return jobs


def kill(journal: Journal) -> None:
    """kill -9: the descriptors go, nothing kept in memory is written."""
    for fd in (journal._tail.fd, journal._lock_fd):
        if fd >= 0:
            os.close(fd)
    journal._tail.fd = journal._lock_fd = -1


def segment_paths(directory: Path) -> list[Path]:
    """The segment files of every slot under `directory`."""
    return sorted(directory.glob("slot-*/seg-*.log"))


def segment_files(journal: Journal) -> list[Path]:
    """The segment files of `journal`'s own slot."""
    return sorted(Path(journal.path).glob("seg-*.log"))
