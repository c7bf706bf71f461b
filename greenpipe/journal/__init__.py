"""The web's journal: every job written before its 202, replayed after a crash.

A journal is a directory of numbered slots, one per web process; each process
holds an exclusive ``flock`` on its slot's lock file (the kernel drops it on
``kill -9``), so no two processes ever write one journal, and a process that
starts finds an orphaned slot and adopts it. The parts, each in its module:

- `log`: `Journal`, one slot's journal (open, group writes, ACK records);
- `tail`: the segment being written, appended to whole or not at all;
- `compaction`: when a segment rolls, which old ones go, the keys file;
- `replay`: reading slots back, and what is owed after a crash;
- `segments`: the record codec, and the decoder that tells a torn tail from damage;
- `slots`: the slots' folders, locks and adoption; `files`: locks, atomic
  replacement, syncs in the thread pool; `owed`: what each segment owes;
- `commit`: group commit, the requests parked until their group is written.

See docs/design-notes.md ("Issue 29: the journal as a package").
"""

from greenpipe.errors import JournalError
from greenpipe.journal.log import Journal
from greenpipe.journal.replay import Replay
from greenpipe.journal.segments import JOB, encode_job, job_record, record

__all__ = ["Journal", "JournalError", "Replay", "encode_job", "job_record", "record",
           "JOB"]  # fmt: skip
