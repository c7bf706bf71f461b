"""No test leaves a process behind: the suite adopts orphans and checks at the end.

The test process makes itself a child subreaper (Linux `prctl`), so a
process whose parent died (a web's child after the web's `kill -9`, an
example's worker after its master crashed) becomes the test process's child
instead of init's, and stays visible. At the end of the session every
descendant still running is named, killed (by its PID: it is ours) and the
session fails. Exited orphans (zombies) are only reaped.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

import psutil

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


def adopt_orphans() -> bool:
    """Make this process the reaper of its descendants' orphans; False if not Linux."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def running_descendants() -> list[psutil.Process]:
    """Descendants of this process that still run (zombies reaped on the way)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                if child.ppid() == os.getpid():
                    os.waitpid(child.pid, os.WNOHANG)
                continue
            found.append(child)
        except (psutil.NoSuchProcess, ChildProcessError):
            continue
    return found


def describe(proc: psutil.Process) -> str:
    try:
        return f"pid {proc.pid}: {' '.join(proc.cmdline())[:200]}"
    except psutil.Error:
        return f"pid {proc.pid}: (gone)"


def end_leftovers(grace_s: float = 3.0) -> list[str]:
    """Name, then end, every descendant still running; [] when there is none.

    Each gets SIGTERM, then SIGKILL after `grace_s`, and is reaped.
    """
    leftovers = running_descendants()
    names = [describe(proc) for proc in leftovers]
    for proc in leftovers:
        with contextlib.suppress(psutil.Error):  # gone meanwhile
            proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(leftovers, timeout=grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=grace_s)
    running_descendants()  # reap what just exited
    return names
