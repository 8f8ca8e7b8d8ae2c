"""Keep freed memory in the process while training, so that each step reuses the last one's.

A training step allocates and frees the same large tensors every time: the [B, κ] pre-activations
alone are 33 MB at batch 4096, κ 2048. glibc's malloc serves blocks above its mmap threshold
(128 KiB, raised as blocks are freed, to at most 32 MiB) with fresh pages from the kernel, and
returns the top of its heap above its trim threshold: every step then pays again for page faults
and for the kernel zeroing those pages. Measured on 2 cores at that size (`python
benchmarks/train_throughput.py --race-size`): 23,000-28,000 minor faults per step, 10-20% of the step
time, and most of the run-to-run spread.

`reused_heap()` raises both thresholds for the duration of a run, then puts back glibc's
defaults and trims the heap. (PyTorch's CPU tuning guide suggests preloading jemalloc or tcmalloc
instead; this needs nothing installed.) Where the C library is not glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
GLIBC_DEFAULT_THRESHOLD = 128 * 1024
"""Both thresholds' defaults (bytes); setting one turns off glibc's dynamic adjustment of them."""
TRAINING_MMAP_THRESHOLD = 256 << 20
"""Blocks up to this size come from the heap: the pre-activations up to batch 4096 × κ 16,384."""
TRAINING_TRIM_THRESHOLD = 1 << 30
"""The heap keeps up to this much free memory for reuse."""

_lock = threading.Lock()
_depth = 0  # nested or concurrent runs: the last one out restores the defaults


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if platform.libc_ver()[0] != "glibc":
        return None
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


@contextmanager
def reused_heap() -> Iterator[None]:
    """Within the block, freed memory stays in the process for reuse (module docstring)."""
    global _depth
    libc = _glibc()
    if libc is None:
        yield
        return
    with _lock:
        if _depth == 0:
            libc.mallopt(M_MMAP_THRESHOLD, TRAINING_MMAP_THRESHOLD)
            libc.mallopt(M_TRIM_THRESHOLD, TRAINING_TRIM_THRESHOLD)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(M_MMAP_THRESHOLD, GLIBC_DEFAULT_THRESHOLD)
                libc.mallopt(M_TRIM_THRESHOLD, GLIBC_DEFAULT_THRESHOLD)
                libc.malloc_trim(0)
