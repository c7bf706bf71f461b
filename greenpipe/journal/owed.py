"""What each segment of a journal owes: the jobs not yet settled, and their bytes.

The journal, its replay and its compaction share these records: a job owed
sits in the `Segment` that holds its latest JOB record (``Envelope.segment``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from greenpipe.jobs import Envelope


@dataclass
class Owed:
    """A job still owed, as its JOB record was written."""

    job: Envelope
    size: int  # bytes of its record
    key: str
    at: float


@dataclass
class Segment:
    """A live segment file: its size and the jobs it still owes."""

    size: int = 0
    owed: dict[str, Owed] = field(default_factory=dict)
    keyed: bool = False  # holds a JOB record with a key

    def due_bytes(self, now: float) -> int:
        """Bytes of the owed jobs but those waiting past `now` (see compaction)."""
        return sum(entry.size for entry in self.owed.values()
                   if entry.job.not_before <= now)  # fmt: skip
