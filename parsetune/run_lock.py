"""One writer per run dir: an advisory lock held by ``train``, ``run`` and ``export``.

Two commands writing into one run dir interleave ``config.yaml``, ``metrics.jsonl`` and the
checkpoints, and both exit 0. The lock is the file/object ``RUN_DIR/.parsetune.lock`` holding the
holder's host, pid, command and start time, so the one-line refusal says who has the dir.

- Local: ``flock`` on the file. The kernel drops the lock when the holder dies (SIGKILL included),
  so a stale lock never blocks; the file is removed on a clean release.
- gs://: a create-only object, rewritten every ``HEARTBEAT_S`` by a daemon thread. It is stale
  (taken over) when its holder ran on this host and is gone, or when it has not been rewritten for
  ``STALE_S`` (a preempted TPU VM restarted elsewhere must be able to resume its own run).

Only one process of a pod (the chief) takes the lock. A process that already holds the lock of a run
dir takes it again for free (``run`` holds it around the ``train`` it calls).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from parsetune import storage
from parsetune.errors import UserError
from parsetune.output_guard import canonical

LOCK_NAME = ".parsetune.lock"
HEARTBEAT_S = 60.0
STALE_S = 5 * HEARTBEAT_S

_held: dict[str, int] = {}  # canonical run dir -> nesting depth in this process
_guard = threading.Lock()


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    command: str
    started: str

    @staticmethod
    def me(command: str) -> "Holder":
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        return Holder(socket.gethostname(), os.getpid(), command, now)

    def to_bytes(self) -> bytes:
        return (json.dumps(self.__dict__) + "\n").encode()

    @staticmethod
    def parse(data: bytes) -> "Holder | None":
        with contextlib.suppress(ValueError, TypeError, KeyError):
            raw = json.loads(data.decode("utf-8", "replace"))
            return Holder(str(raw["host"]), int(raw["pid"]), str(raw["command"]), str(raw["started"]))
        return None

    def describe(self) -> str:
        return f"`parsetune {self.command}` (pid {self.pid} on {self.host}, since {self.started})"


def _busy(run_dir: str, holder: Holder | None, hint: str) -> UserError:
    who = holder.describe() if holder else "another parsetune process"
    return UserError(f"{run_dir}: in use by {who}; wait for it to finish or stop it{hint}")


class _LocalLock:
    def __init__(self, run_dir: str, command: str) -> None:
        self.path = os.path.join(run_dir, LOCK_NAME)
        import fcntl

        storage.check_output_dir(run_dir)
        self.created = None if os.path.isdir(run_dir) else run_dir  # removed again if left empty
        try:
            os.makedirs(run_dir, exist_ok=True)
        except OSError as err:
            raise UserError(f"{run_dir}: cannot create ({err.strerror or err})") from err
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise UserError(f"{self.path}: cannot open ({err.strerror or err})") from err
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                with contextlib.suppress(OSError):
                    holder = Holder.parse(os.pread(fd, 4096, 0))
                os.close(fd)
                raise _busy(run_dir, holder, "") from None
            # the holder before us may have removed the file between our open and our flock
            with contextlib.suppress(FileNotFoundError):
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            os.close(fd)
        self.fd = fd
        data = Holder.me(command).to_bytes()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # while still locked: a waiter re-checks the inode
        os.close(self.fd)
        if self.created:
            with contextlib.suppress(OSError):
                os.rmdir(self.created)  # only if the command failed before writing anything


class _GcsLock:
    def __init__(self, run_dir: str, command: str) -> None:
        self.path = storage.join(run_dir, LOCK_NAME)
        self.holder = Holder.me(command)
        self.generation = self._take(run_dir)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._heartbeat, name="parsetune-run-lock", daemon=True)
        self.thread.start()

    def _take(self, run_dir: str) -> int:
        existing = storage.list_objects(self.path)
        current = next((info for info in existing if info.path == self.path), None)
        if current is not None:
            holder = Holder.parse(storage.read_bytes(self.path))
            gone = holder is not None and holder.host == socket.gethostname() and not storage.process_is_running(holder.pid)
            if not gone and current.age_s <= STALE_S:
                hint = f" (a lock not renewed for {STALE_S:.0f} s counts as abandoned; remove {self.path} only if no run uses it)"
                raise _busy(run_dir, holder, hint)
            print(f"[parsetune] taking over the abandoned lock {self.path}", file=sys.stderr, flush=True)
            storage.delete(self.path, if_generation_match=current.generation)
        try:
            return int(storage.create_bytes(self.path, self.holder.to_bytes()))
        except UserError:
            holder = Holder.parse(storage.read_bytes(self.path)) if storage.exists(self.path) else None
            raise _busy(run_dir, holder, "") from None

    def _heartbeat(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            with contextlib.suppress(UserError):
                self.generation = int(storage.write_bytes_atomic(self.path, self.holder.to_bytes(), if_generation_match=self.generation))

    def release(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        with contextlib.suppress(UserError):
            storage.delete(self.path, if_generation_match=self.generation)


@contextlib.contextmanager
def run_dir_lock(run_dir: str, command: str) -> Iterator[None]:
    """Hold the run dir's lock for the block; ``UserError`` (one line, naming the holder) if another
    live process holds it."""
    key = canonical(run_dir)
    with _guard:
        if key in _held:
            _held[key] += 1
            lock = None
        else:
            lock = _GcsLock(run_dir, command) if storage.is_gcs(run_dir) else _LocalLock(run_dir, command)
            _held[key] = 1
    try:
        yield
    finally:
        with _guard:
            _held[key] -= 1
            if _held[key] == 0:
                del _held[key]
        if lock is not None:
            lock.release()
