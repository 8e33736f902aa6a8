"""A group of files written together: all of them, or what was there before.

``eval score`` writes metrics.json, per_example.jsonl, errors.json and the confusion matrix into one
directory. If the group fails part-way (disk full, a path that is a directory, Ctrl-C), the files it
already wrote are taken back, and a file it had replaced gets its previous content back: a failed
re-run never leaves the last good scores deleted or mixed with new ones.

Each write is atomic on its own (``storage.write_bytes_atomic``). Before replacing an existing file
the writer keeps the old one aside (a hard link locally, a server-side copy on gs://); the copies
are dropped when the group succeeds and moved back when it fails.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid

from parsetune import storage
from parsetune.errors import UserError


class AllOrNothingWriter:
    """Use as a context manager; an exception inside the ``with`` block restores every file this
    writer touched to what it was before the block (absent, or its old content)."""

    def __init__(self) -> None:
        self.written: list[tuple[str, str | None]] = []  # (path, where its previous version was kept)

    def write_bytes(self, path: str, data: bytes) -> None:
        backup = self._keep_previous(path)
        try:
            storage.write_bytes_atomic(path, data)
        except BaseException:
            self._restore(path, backup)
            raise
        self.written.append((path, backup))

    def write_text(self, path: str, text: str) -> None:
        self.write_bytes(path, text.encode("utf-8"))

    def __enter__(self) -> "AllOrNothingWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            for _, backup in self.written:
                if backup is not None:
                    with contextlib.suppress(Exception):
                        storage.delete(backup)
            return
        for path, backup in reversed(self.written):
            with contextlib.suppress(Exception):
                self._restore(path, backup)

    @staticmethod
    def _keep_previous(path: str) -> str | None:
        if storage.is_gcs(path):
            if storage.generation(path) is None:
                return None
            backup = f"{path}.previous-{uuid.uuid4().hex[:8]}"
            storage.copy_object(path, backup)
            return backup
        if not os.path.isfile(path):
            return None
        directory, name = os.path.split(os.path.abspath(path))
        backup = os.path.join(directory, f".{name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")  # removed by the next write if we die
        try:
            os.link(path, backup)  # the old file stays whole under a second name; costs no space
        except OSError:
            try:
                fd, backup = tempfile.mkstemp(prefix=f".{name}.{os.getpid()}-", suffix=".tmp", dir=directory)
                with os.fdopen(fd, "wb") as f, open(path, "rb") as old:
                    f.write(old.read())
            except OSError as err:
                raise UserError(f"{path}: cannot keep the previous version aside ({err.strerror or err}); nothing was changed") from err
        return backup

    @staticmethod
    def _restore(path: str, backup: str | None) -> None:
        if backup is None:
            storage.delete(path)
        elif storage.is_gcs(path):
            storage.copy_object(backup, path)
            storage.delete(backup)
        elif os.path.exists(path) and os.path.samefile(backup, path):
            os.unlink(backup)  # never replaced (rename between two links of one file would do nothing)
        else:
            os.replace(backup, path)
