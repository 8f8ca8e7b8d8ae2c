"""One writer per folder: a harvest into a store, a training run into its out_dir.

flock is released by the kernel when a process dies, so a killed job never leaves a lock that
blocks the next run; the lock file keeps the holder's pid, for the message."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def exclusive_folder(folder: Path, lock_name: str, refuse: Callable[[str], Exception]) -> Iterator[None]:
    """Hold `folder/lock_name` while the block runs; if another process holds it, raise
    `refuse(holder_pid)` at once (no waiting: the other job may run for hours)."""
    handle = open(folder / lock_name, "a+")  # noqa: SIM115 (held while the lock is)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise refuse(holder) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
