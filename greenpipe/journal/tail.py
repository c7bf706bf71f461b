"""The tail of a journal slot: the segment being written, appended to whole or
not at all, and the book of the live segments it ends.

A write that fails anywhere (an OSError, or a ``gevent.Timeout`` thrown while
the thread pool syncs) is cut back before the exception propagates; if the cut
fails, the segment ends there and a CANCEL record in the next one settles the
group. A failed fdatasync rewrites the group to a new segment, once.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os

from greenpipe.journal.files import offload as _offload
from greenpipe.journal.owed import Segment
from greenpipe.journal.segments import CANCEL, record
from greenpipe.journal.slots import segment_name

log = logging.getLogger("greenpipe.journal")


class Tail:
    """The segment being written in `folder` (see the module docstring).

    `segments` holds the live segments, oldest first, this one last; each
    write keeps its size there. `healthy`, `failures` and `last_error` say
    how the group writes fare.
    """

    def __init__(self, sync: str) -> None:
        self.sync = sync
        self.folder = ""
        self.segments: dict[int, Segment] = {}  # live, oldest first
        self.fd = -1
        self.number = 0  # of the segment being written
        self.size = 0  # its size in bytes (the last good record's end)
        self.busy = False  # a group's write and its sync under way
        self.bytes_written = self.failures = 0
        self.healthy = True
        self.last_error = ""

    def open(self, folder: str, segments: dict[int, Segment]) -> None:
        """Take over `segments` read from `folder`; write a new segment after them."""
        self.folder, self.segments = folder, segments
        self.start(max(segments, default=0) + 1)

    def start(self, number: int) -> None:
        """Write segment `number` from now on (appended to, if it exists)."""
        path = os.path.join(self.folder, segment_name(number))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if self.fd >= 0:
            os.close(self.fd)
        self.fd, self.number, self.size = fd, number, os.fstat(fd).st_size
        self.segments.setdefault(number, Segment(self.size))

    def write(self, data: bytes, ids: list[bytes]) -> None:
        """Append a group's `data` (and sync it in batch mode); on failure, leave
        none of it.

        Any exception (an OSError, or a gevent.Timeout thrown while a thread
        syncs) cuts the file back to where it was, or if that fails, writes a
        CANCEL record for `ids`, before it propagates.
        """
        start, number = self.size, self.number
        self.busy = True
        try:
            written = os.write(self.fd, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, f"short write: {written} of {len(data)}")
            self.size = start + len(data)
            if self.sync == "batch":
                self._datasync(data, start)
        except BaseException as exc:
            self._undo(exc, start if self.number == number else 0, ids)
            raise
        finally:
            self.busy = False
        self.segments[self.number].size = self.size
        self.bytes_written += len(data)
        if not self.healthy:
            log.warning("journal: %s is writable again", self.folder)
            self.healthy = True

    def append(self, data: bytes) -> bool:
        """Append records that are not a group (no sync); True if written whole.

        Raises OSError if nothing was written. A short write (a full disk) left
        a torn record: it is cut off, or else left as this segment's torn tail
        (the next records go to a new one); False: write them again.
        """
        written = os.write(self.fd, data)
        if written == len(data):
            self.size += len(data)
            self.segments[self.number].size = self.size
            return True
        log.error("journal: short write of ACK records to %s", self.folder)
        try:
            os.ftruncate(self.fd, self.size)
        except OSError:
            with contextlib.suppress(OSError):
                self.start(self.number + 1)
        return False

    def _datasync(self, data: bytes, start: int) -> None:
        """fdatasync; on failure, write the batch again to a new segment.

        A failed fdatasync may have dropped the dirty pages (the kernel marks
        them clean): syncing again would "succeed" on lost data (PostgreSQL's
        data_sync_retry). So the batch is rewritten from memory, once.
        """
        try:
            _offload(os.fdatasync, self.fd)
            return
        except OSError as exc:
            log.error("journal: fdatasync of %s failed (%s); rewriting", self.folder,
                      exc)  # fmt: skip
        os.ftruncate(self.fd, start)
        self.segments[self.number].size = start
        self.start(self.number + 1)
        written = os.write(self.fd, data)
        if written != len(data):
            raise OSError(errno.ENOSPC, f"short write: {written} of {len(data)}")
        self.size = len(data)
        _offload(os.fdatasync, self.fd)

    def _undo(self, exc: BaseException, start: int, ids: list[bytes]) -> None:
        self.failures += 1
        what = exc.strerror if isinstance(exc, OSError) else repr(exc)
        self.last_error = f"{self.folder}: {what or exc}"
        if self.healthy:
            log.error("journal: cannot write %s (%s); refusing jobs", self.folder, what)
        self.healthy = False
        try:
            os.ftruncate(self.fd, start)  # a later open must not replay them
            self.size = start
            return
        except OSError as cut:
            log.error("journal: cannot cut %s back (%s)", self.folder, cut)
        # Whatever stays of the group ends the segment (a torn tail, or records
        # the CANCEL below settles): the next records go to a new one, so no
        # later cut back can take the CANCEL away, nor follow a torn record.
        try:
            self.start(self.number + 1)
        except OSError as roll:
            log.error("journal: cannot start a new segment in %s (%s)", self.folder,
                      roll)  # fmt: skip
            return
        if not ids:
            return  # only carried copies: replay deduplicates them
        cancel = record(CANCEL, b" ".join(ids))
        try:
            if os.write(self.fd, cancel) == len(cancel):
                self.size += len(cancel)
                self.segments[self.number].size = self.size
                return
            raise OSError(errno.ENOSPC, "short write")
        except OSError as cancel_failed:
            log.error(
                "journal: cannot cancel %d jobs answered 503 in %s either (%s); "
                "they would run after a restart: move the journal aside first",
                len(ids), self.folder, cancel_failed,
            )  # fmt: skip

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = -1
