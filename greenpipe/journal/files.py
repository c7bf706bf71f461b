"""The journal's whole files: locks, atomic replacement, and syncs off the loop.

Every fdatasync/fsync the journal makes goes through `offload`, into gevent's
thread pool: a stalled disk must not freeze the web (an inline sync cannot be
bounded by a timeout). The scheduler uses `lock_file` and `replace_file` too.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable
from typing import Any

import gevent


def offload(function: Callable[..., Any], *args: Any) -> Any:
    """Run a call that may stall (a sync) in gevent's thread pool (see module)."""
    return gevent.get_hub().threadpool.apply(function, args)


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
