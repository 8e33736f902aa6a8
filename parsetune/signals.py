"""SIGTERM handled like Ctrl-C: the command unwinds and its cleanup runs.

Python's default for SIGTERM is to die at once, skipping every ``finally`` and ``except``; a
command that stages files (prep) would leave them behind. Inside ``interrupt_on_sigterm()`` a
SIGTERM raises ``KeyboardInterrupt`` instead, exactly like SIGINT, and the CLI reports
"interrupted" (exit status 130). SIGKILL cannot be caught: the next run cleans up after it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises ``KeyboardInterrupt`` (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
