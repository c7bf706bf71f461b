"""The web's journal: every job written before its 202, replayed after a crash.

`Journal` (log.py) is what the dispatcher uses; its parts live beside it (see
docs/design-notes.md, "Issue 29: the journal as a package").
"""

from greenpipe.journal.log import Journal
from greenpipe.journal.segments import JOB, encode_job, record
from greenpipe.journal.slots import JournalError, Replay

__all__ = ["Journal", "JournalError", "Replay", "encode_job", "record", "JOB"]
