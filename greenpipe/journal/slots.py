"""A journal's folders: slots, their locks, and the adoption of orphans.

A slot is a folder of segment files and a keys file, held by one web
process through an exclusive ``flock`` on ``slot-N.lock``. `Slots` takes a
free slot, finds orphans (slots no live process holds), and renames what it
adopts to ``adopted-...-by-N`` so no other process can take it as its own.
Reading a folder back is `greenpipe.journal.replay`'s.
"""

from __future__ import annotations

import contextlib
import os
import time

from greenpipe.errors import ConfigError
from greenpipe.journal.files import lock_file

MAX_SLOTS = 64
KEYS_FILE = "keys"


def segment_name(number: int) -> str:
    return f"seg-{number:08d}.log"


def segment_numbers(folder: str) -> list[int]:
    """The numbers of the segment files in `folder`, oldest first."""
    numbers = []
    for name in os.listdir(folder):
        if name.startswith("seg-") and name.endswith(".log"):
            try:
                numbers.append(int(name[4:-4]))
            except ValueError:
                continue
    return sorted(numbers)


class Slots:
    """The slots of one journal directory (see the module docstring)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def slot_dir(self, slot: int) -> str:
        return os.path.join(self.directory, f"slot-{slot}")

    def holds_jobs(self, folder: str) -> bool:
        return os.path.isdir(folder) and (
            bool(segment_numbers(folder))
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

    def orphans(self, own: int) -> list[tuple[int, int]]:
        """(slot, its lock fd) of each slot with files that no live process holds.

        The locks are held until the adoption is done (then closed by the caller).
        """
        orphans = []
        for other in self._named(own):
            if not self.holds_jobs(self.slot_dir(other)) and not self.adoptions(other):
                continue
            fd = self.lock(other)
            if fd >= 0:  # no live process holds it: an orphan
                orphans.append((other, fd))
        return orphans

    def _named(self, own: int) -> list[int]:
        """The slots other than `own` that a folder names (one listing: each tick)."""
        numbers = set()
        for name in os.listdir(self.directory):
            if name.startswith("slot-") and not name.endswith(".lock"):
                number = name[len("slot-") :]
            elif name.startswith("adopted-") and "-by-" in name:
                number = name.rsplit("-by-", 1)[1]
            else:
                continue
            if number.isdigit() and int(number) < MAX_SLOTS:
                numbers.add(int(number))
        numbers.discard(own)
        return sorted(numbers)

    def adopt(self, own: int, orphans: list[int]) -> list[str]:
        """Rename what slot `own` adopts (synced); the folders to read, then remove.

        Each is first renamed "adopted-...-by-<own>": a crash before its folder
        is gone leaves it to whoever holds slot `own` next, who reads it beside
        the copies already carried there (replay deduplicates by id); no process
        can take it as a slot of its own.
        """
        sources = self.adoptions(own)
        for other in orphans:
            sources += self.adoptions(other)
            if self.holds_jobs(self.slot_dir(other)):
                sources.append(self.slot_dir(other))
        return [self.mark_adopted(folder, own) for folder in sources]

    def remove_slot(self, folder: str) -> None:
        """An adopted slot's files, oldest segment first, then the folder itself."""
        names = [segment_name(number) for number in segment_numbers(folder)]
        for name in [*names, KEYS_FILE, KEYS_FILE + ".tmp"]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(folder, name))
        with contextlib.suppress(OSError):
            os.rmdir(folder)
