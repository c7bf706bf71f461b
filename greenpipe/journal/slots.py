"""A journal's folders: slots, their locks, and the adoption of orphans.

A slot is a folder of segment files and a keys file, held by one web
process through an exclusive ``flock`` on ``slot-N.lock``. `Slots` takes a
free slot, finds orphans (slots no live process holds), and renames what it
adopts to ``adopted-...-by-N`` so no other process can take it as its own.
Reading a folder back is `greenpipe.journal.replay`'s. ``web.json`` says
which web the journal belongs to (`Identity`): another web is refused.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass

from greenpipe.errors import ConfigError
from greenpipe.journal.files import lock_file

log = logging.getLogger("greenpipe.journal")

MAX_SLOTS = 64
KEYS_FILE = "keys"
IDENTITY_FILE = "web.json"


@dataclass(frozen=True)
class Identity:
    """The web a journal belongs to: its workers as configured, and CURVE on/off.

    The configured source, not the live membership: WORKERS (or the file
    WORKERS_FILE names, read at start; SIGHUP changes its content, never its
    path) and whether jobs travel encrypted. Two identities are one web when
    CURVE agrees and they share the workers file or at least one worker: a
    worker added or removed across a restart keeps the journal, a web with
    other workers (or jobs that would leave in the clear) is refused.
    """

    workers: tuple[str, ...]
    workers_file: str = ""
    curve: bool = False

    def same_web(self, other: Identity) -> bool:
        if self.curve != other.curve:
            return False
        if self.workers_file and self.workers_file == other.workers_file:
            return True
        return bool(set(self.workers) & set(other.workers))

    def describe(self) -> str:
        source = f"WORKERS_FILE {self.workers_file}, " if self.workers_file else ""
        return (f"{source}workers {', '.join(self.workers) or 'none'}, "
                f"CURVE {'on' if self.curve else 'off'}")  # fmt: skip

    def encode(self) -> bytes:
        return json.dumps({"workers": list(self.workers),
                           "workers_file": self.workers_file,
                           "curve": self.curve}).encode() + b"\n"  # fmt: skip

    @classmethod
    def decode(cls, data: bytes) -> Identity | None:
        try:
            raw = json.loads(data)
            workers = tuple(str(worker) for worker in raw["workers"])
            return cls(workers, str(raw.get("workers_file", "")), bool(raw["curve"]))
        except (ValueError, KeyError, TypeError):
            return None


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

    def claim(self, identity: Identity, takeover: bool) -> None:
        """Check that this journal is `identity`'s web's, and record it there.

        A journal without ``web.json`` (new, or older than it) becomes this
        web's; one of the same web whose workers changed is recorded anew.
        Raises ConfigError naming both webs and the way out if it belongs to
        another web, unless `takeover` (JOURNAL_TAKEOVER) says to take it.
        """
        path = os.path.join(self.directory, IDENTITY_FILE)
        unreadable = False
        try:
            with open(path, "rb") as file:
                raw = file.read()
            found = Identity.decode(raw)
            unreadable = found is None  # empty (a power loss) or damaged
        except FileNotFoundError:
            found = None
        except OSError as exc:
            raise ConfigError(
                f"JOURNAL_DIR: cannot read {path} ({exc.strerror or exc}); fix its "
                "permissions, or give this web its own JOURNAL_DIR"
            ) from None
        if found == identity:
            return
        if unreadable:  # no identity to keep: this web's, as for a new journal
            log.warning("journal: %s is unreadable (%d bytes); it names this web "
                        "now", path, len(raw))  # fmt: skip
        if found is not None and not found.same_web(identity):
            if not takeover:
                raise ConfigError(
                    f"JOURNAL_DIR: {self.directory!r} is the journal of another web "
                    f"({found.describe()}); this web has {identity.describe()}. "
                    "Give this web its own JOURNAL_DIR, or start it once with "
                    "JOURNAL_TAKEOVER=true to replay that web's jobs with these "
                    "workers and make the journal this web's"
                )
            log.warning("journal: %s taken over (JOURNAL_TAKEOVER) from the web "
                        "with %s", self.directory, found.describe())  # fmt: skip
        temporary = f"{path}.{os.getpid()}.tmp"
        with open(temporary, "wb") as file:
            file.write(identity.encode())
            file.flush()
            os.fsync(file.fileno())  # whole before it is linked in
        if found is not None or unreadable:
            os.replace(temporary, path)
            return
        try:  # the first: never over another web's, written meanwhile
            os.link(temporary, path)
        except FileExistsError:
            os.unlink(temporary)
            self.claim(identity, takeover)  # checked against that one
            return
        os.unlink(temporary)

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
