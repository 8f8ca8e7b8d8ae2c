"""Atomic file writes: the one way interp-sae commits a file to disk.

Guarantee: a reader (or a process that restarts after a kill or a power cut) sees either the
complete old file or the complete new one, never a torn one. How: the bytes go to a temporary
file in the same folder, which is fsynced, renamed over the target (atomic on POSIX), and then
the folder itself is fsynced so that the rename survives a crash. Shards, manifests, checkpoints,
dictionaries and reports all go through `write_atomic`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_atomic(path: str | Path, content: bytes | Callable[[Path], None]) -> Path:
    """Write `content` (bytes, or a function that writes the file at the path it is given) to
    `path` atomically; creates the parent folder. Returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        if callable(content):
            os.close(fd)
            fd = -1
            content(tmp)
            fd = os.open(tmp, os.O_RDONLY)
        else:
            with memoryview(content) as view:
                written = 0
                while written < len(view):
                    written += os.write(fd, view[written:])
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, data: Any, indent: int | None = 1) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")


def fsync_folder(folder: str | Path) -> None:
    """Make the folder's entries (a rename, a new file) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temporaries(folder: str | Path, name: str) -> None:
    """Delete what a killed `write_atomic(folder / name)` left behind."""
    for stale in Path(folder).glob(f".{name}.*.tmp"):
        stale.unlink(missing_ok=True)
