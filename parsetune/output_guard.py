"""Never destroy what we did not make: the checks every writing command runs before any work.

Two rules, each a one-line ``UserError`` raised before anything is read at length or written:

- An output never overwrites, deletes or contains one of the command's own inputs
  (``eval generate --data X --out X``, ``prep ... --train D/train.jsonl --out D``).
- A directory that a command replaces whole (an export, a prepared set, a converted base model) is
  replaced only when it is absent, empty, or carries that command's own marker file; anything else
  is somebody's files (``export --out .`` would otherwise take the working directory).

Paths compare after resolving symlinks and ``..`` locally; gs:// paths compare as normalised
strings (``gs://b/a//x/`` is ``gs://b/a/x``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from parsetune import storage
from parsetune.errors import UserError


def canonical(path: str) -> str:
    """A path in the form two paths to the same place share (local: absolute, symlinks resolved)."""
    if storage.is_gcs(path):
        return "gs://" + re.sub(r"/+", "/", path[len("gs://") :]).rstrip("/")
    return os.path.realpath(os.path.expanduser(path))


def is_within(path: str, directory: str) -> bool:
    """``path`` is ``directory`` or lies below it."""
    p, d = canonical(path), canonical(directory)
    if storage.is_gcs(p) != storage.is_gcs(d):
        return False
    sep = "/" if storage.is_gcs(p) else os.sep
    return p == d or p.startswith(d.rstrip(sep) + sep)


def refuse_inputs_as_output(output: str, inputs: Iterable[str | None], flag: str = "--out") -> None:
    """``UserError`` if the output file ``output`` is one of ``inputs`` or lies inside one of them
    (an input may be a directory, e.g. a model)."""
    for source in inputs:
        if source and is_within(output, source):
            what = "is" if canonical(output) == canonical(source) else "lies inside"
            raise UserError(f"{flag} {output}: {what} the input {source}; writing there would destroy it, choose another path")


def refuse_inputs_inside(directory: str, inputs: Iterable[str | None], flag: str = "--out") -> None:
    """``UserError`` if the output directory ``directory`` (replaced whole) holds one of ``inputs``
    or lies inside one of them."""
    for source in inputs:
        if not source:
            continue
        if is_within(source, directory):
            raise UserError(
                f"{flag} {directory}: holds the input {source}, which replacing the directory would overwrite or delete; "
                "write to another directory"
            )
        if is_within(directory, source):
            raise UserError(f"{flag} {directory}: lies inside the input {source}; write to another directory")


def _entries(directory: str) -> list[str]:
    """Names directly in a local directory, or relative object names below a gs:// prefix."""
    if storage.is_gcs(directory):
        prefix = directory.rstrip("/") + "/"
        return [info.path[len(prefix) :] for info in storage.list_objects(prefix)]
    if not os.path.isdir(directory):
        return []
    return os.listdir(directory)


def check_replaceable(directory: str, marker: str | tuple[str, ...], what: str, flag: str = "--out") -> None:
    """``UserError`` unless ``directory`` is absent, empty, or holds ``marker`` (or one of several:
    our own earlier output of the same kind, which the command may replace). ``what`` names it."""
    storage.check_output_dir(directory)
    entries = _entries(directory)
    markers = (marker,) if isinstance(marker, str) else marker
    if not entries or any(m in entries for m in markers):
        return
    marker = markers[0]
    shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
    raise UserError(
        f"{flag} {directory}: not empty ({shown}) and not {what} (no {marker}); it would be replaced whole, "
        "so give a new or empty directory"
    )
