"""Ctrl-C during a long loop: finish the current step, so the job can save where it stands.

Python raises KeyboardInterrupt wherever the main thread happens to be, possibly halfway through
an optimiser step, so all a training run could keep was its last periodic checkpoint (up to
`checkpoint_every` steps back). Within `deferred_interrupt()` the first SIGINT only sets
`requested`; the loop checks it between steps, saves and raises KeyboardInterrupt itself. A second
SIGINT raises at once, for a user who will not wait.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class InterruptRequest:
    requested: bool = False

    def handle(self, _signum: int, _frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


@contextmanager
def deferred_interrupt(enabled: bool = True) -> Iterator[InterruptRequest]:
    """Defer SIGINT for the block (see the module docstring). It stays as it is when `enabled` is
    False, off the main thread, or when someone else installed their own SIGINT handler."""
    request = InterruptRequest()
    if not (
        enabled
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    ):
        yield request
        return
    signal.signal(signal.SIGINT, request.handle)
    try:
        yield request
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
