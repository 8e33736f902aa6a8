"""SIGTERM handled like Ctrl-C: the command unwinds and its cleanup runs; a pod host stops in bounded time.

Python's default for SIGTERM is to die at once, skipping every ``finally`` and ``except``; a
command that stages files (prep) would leave them behind. Inside ``interrupt_on_sigterm()`` a
SIGTERM raises ``KeyboardInterrupt`` instead, exactly like SIGINT, and the CLI reports
"interrupted" (exit status 130). SIGKILL cannot be caught: the next run cleans up after it.

A host of a multi-process run uses ``stop_on_signals()`` instead (below): it also bounds the time to
stop when the main thread cannot unwind (inside a collective), and stops when its launcher dies.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
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


# ---- a host of a pod: stop within a bounded time ----------------------------------------------
#
# ``jax.distributed.initialize()`` starts JAX's preemption notifier, which installs a C-level SIGTERM
# handler that only records the notice for ``multihost_utils.reached_preemption_sync_point`` (which
# nothing here calls): a pod host swallowed SIGTERM and ran on until SIGKILL, orphaned when its
# launcher was gone. ``stop_on_signals()`` takes SIGTERM and SIGINT back:
#
# - the main thread gets ``KeyboardInterrupt`` at its next Python instruction (between decode steps,
#   task-eval batches, training steps), and ``raise_if_stopping()`` in long loops re-raises it should
#   some library code have swallowed it;
# - a watchdog thread is woken by the signal itself (``signal.set_wakeup_fd``), not by the main thread,
#   so a main thread stuck in a collective whose peer is gone still ends: after the deadline the watchdog
#   exits the process (``os._exit``). A TPU VM gets its preemption SIGTERM ~30 s before the kill.
# - with PARSETUNE_LAUNCHER_PID (set by ``--hosts N``), the host stops when its launcher dies, even by
#   SIGKILL: Linux sends it SIGTERM (``PR_SET_PDEATHSIG``), and the watchdog also polls its parent pid.

STOP_DEADLINE_ENV = "PARSETUNE_STOP_DEADLINE"  # seconds from SIGTERM to a forced exit
DEFAULT_STOP_DEADLINE = 20.0  # under the ~30 s a TPU VM gets between the preemption notice and the kill
LAUNCHER_PID_ENV = "PARSETUNE_LAUNCHER_PID"
FORCED_EXIT_STATUS = 143  # 128 + SIGTERM, as if the signal had killed it
_PR_SET_PDEATHSIG = 1

_stop = threading.Event()
_unwinding = threading.Event()  # the main thread got its KeyboardInterrupt (once)
_installed = False


def stop_requested() -> bool:
    """True once this process got SIGTERM/SIGINT (or lost its launcher) under ``stop_on_signals``."""
    return _stop.is_set()


def raise_if_stopping() -> None:
    """For long loops (decode steps, evaluation batches): unwind now if a stop was requested."""
    if _stop.is_set():
        raise KeyboardInterrupt("stop requested")


def stop_deadline() -> float:
    value = os.environ.get(STOP_DEADLINE_ENV, "")
    try:
        return float(value) if value else DEFAULT_STOP_DEADLINE
    except ValueError:
        from parsetune.errors import UserError

        raise UserError(f"{STOP_DEADLINE_ENV}={value!r}: expected a number of seconds") from None


def _interrupt(signum, frame) -> None:
    _stop.set()
    if _unwinding.is_set():  # a second signal while unwinding: the watchdog's deadline already runs
        return
    _unwinding.set()
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _set_parent_death_signal() -> None:
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # the watchdog's parent-pid poll still notices


def _launcher_pid() -> int | None:
    value = os.environ.pop(LAUNCHER_PID_ENV, "")  # popped: a child of this host has another parent
    return int(value) if value.isdigit() else None


def stop_on_signals(who: str, deadline: float | None = None, poll_seconds: float = 1.0) -> None:
    """Make SIGTERM/SIGINT stop this process within ``deadline`` seconds (see above). Call from the
    main thread after ``jax.distributed.initialize()`` (whose handler this replaces); ``who`` names
    the process in the one line printed when it stops."""
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        return
    deadline = stop_deadline() if deadline is None else deadline
    launcher = _launcher_pid()
    reader, writer = socket.socketpair()
    reader.setblocking(True)
    writer.setblocking(False)
    signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    _installed = True
    if launcher is not None:
        _set_parent_death_signal()
    watchdog = threading.Thread(
        target=_watch, args=(reader, writer, who, deadline, launcher, poll_seconds), name="parsetune-stop-watchdog", daemon=True
    )
    watchdog.start()


def _watch(reader: socket.socket, writer: socket.socket, who: str, deadline: float, launcher: int | None, poll: float) -> None:
    reader.settimeout(poll)
    reason = None
    while reason is None:
        try:
            data = reader.recv(64)
        except socket.timeout:
            data = b""
        for signum in data:
            if signum in (signal.SIGTERM, signal.SIGINT):
                reason = signal.Signals(signum).name
        if reason is None and launcher is not None and os.getppid() != launcher:
            reason = "its launcher is gone"
            os.kill(os.getpid(), signal.SIGTERM)  # unwinds the main thread like a signal from outside
    _stop.set()
    print(f"{who}: stopping ({reason}); exiting within {deadline:g} s", file=sys.stderr, flush=True)
    time.sleep(deadline)
    print(f"{who}: did not stop within {deadline:g} s of {reason}; exiting now", file=sys.stderr, flush=True)
    os._exit(FORCED_EXIT_STATUS)
