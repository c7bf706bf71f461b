"""Compaction: when the segment being written rolls, and which old segments go.

Compaction goes oldest segment first (an ACK record always follows its job's
record, so a segment never goes before one that holds jobs its ACKs settle).
The segment being written rolls at SEGMENT_ROLL bytes whatever is owed; an
older segment goes once its jobs are settled, or once its few owed jobs (at
most a quarter of its bytes) are carried into the current one. Jobs waiting
for their time (a delayed push, a retry's backoff) do not count in that
quarter: they are carried whatever their number, so a job due in a week never
pins the segments written meanwhile. To keep carrying them cheap, a segment
rolls at no less than CARRY_SHARE times their bytes (recomputed every
SEGMENT_ROLL bytes): they are rewritten at most once per roll, a quarter of
what was written. A group carries at most a quarter of SEGMENT_ROLL: the rest
goes with the next groups (a carry of 50,000 jobs would stall one group past
its COMMIT_TIMEOUT on a slow disk, and the next, and so on); the old segment
goes once all it owed is carried.

The keys file (``keys``) holds the keys in their window whose JOB records went
with their segments; it is rewritten whole and atomically (`replace_file`)
only when a segment holding keyed jobs goes, so at most once per SEGMENT_ROLL
bytes written. `Compaction` decides; the journal writes, carries and deletes.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from greenpipe.journal.files import replace_file
from greenpipe.journal.owed import Owed, Segment
from greenpipe.journal.replay import Keys
from greenpipe.journal.segments import KEY, encode_key, record
from greenpipe.journal.slots import KEYS_FILE

SEGMENT_ROLL = 4 << 20  # bytes: past this, the next group goes to a new segment
CARRY_SHARE = 4  # an old segment's owed jobs are carried at 1/CARRY_SHARE its size


@dataclass
class Plan:
    """What a compaction does, in order: carry, rewrite the keys file, delete."""

    carry: list[Owed] = field(default_factory=list)  # into the current segment
    doomed: list[int] = field(default_factory=list)  # segments to delete after
    keyed: bool = False  # one of them holds keyed jobs: rewrite the keys file


class Compaction:
    """The roll floor, and what goes (see the module docstring)."""

    def __init__(self) -> None:
        self.roll_floor = 0  # CARRY_SHARE x the waiting jobs' bytes: no roll below
        self._checked_at = 0  # the size at which that was last computed
        self._checked_in = -1  # in which segment (a new one starts from 0)

    def rolls(
        self, current: int, size: int, segments: Mapping[int, Segment], now: float
    ) -> bool:
        """True if segment `current`, being written, is full (`size` bytes): the
        next group goes to a new one."""
        if current != self._checked_in:
            self._checked_at, self._checked_in = 0, current
        roll = max(SEGMENT_ROLL, self.roll_floor)
        if size < min(roll, self._checked_at + SEGMENT_ROLL):
            return False
        self._checked_at = size  # again every SEGMENT_ROLL bytes
        self.roll_floor = CARRY_SHARE * waiting_bytes(segments, now)
        return size >= max(SEGMENT_ROLL, self.roll_floor)

    def plan(self, segments: Mapping[int, Segment], current: int, now: float) -> Plan:
        """The old segments that go now, oldest first, and what they carry."""
        plan = Plan()
        budget = SEGMENT_ROLL // CARRY_SHARE  # bytes carried per group, about
        for number, segment in segments.items():
            if number == current:
                break
            if segment.owed and segment.due_bytes(now) * CARRY_SHARE > segment.size:
                break  # many due still owed: it waits, and so do the newer ones
            for entry in segment.owed.values():
                if plan.carry and budget < entry.size:
                    break  # the rest goes with the next groups
                plan.carry.append(entry)
                budget -= entry.size
            else:
                plan.doomed.append(number)
                plan.keyed |= segment.keyed
                continue
            break
        return plan


def waiting_bytes(segments: Mapping[int, Segment], now: float) -> int:
    """Bytes of the owed jobs still waiting for their time (delayed, retrying)."""
    return sum(entry.size for segment in segments.values()
               for entry in segment.owed.values()
               if entry.job.not_before > now)  # fmt: skip


def moved(entries: list[Owed], origins: list[Segment | None], current: Segment) -> None:
    """Count carried `entries` as owed in `current`, no longer in their `origins`.

    Written there now, so a compaction cut short must not carry them again once
    acknowledged; one acknowledged during the write is owed nowhere.
    """
    for entry, old in zip(entries, origins, strict=True):
        if old is not None and old.owed.pop(entry.job.id, None) is None:
            current.owed.pop(entry.job.id, None)


def write_keys(folder: str, keys: Keys, exclude: Collection[str], sync: bool) -> None:
    """Replace the keys file by `keys` (but those of jobs in `exclude`)."""
    data = b"".join(record(KEY, encode_key(key, job_id, at))
                    for key, (job_id, at) in keys.items()
                    if job_id not in exclude)  # fmt: skip
    replace_file(os.path.join(folder, KEYS_FILE), data, sync)
