"""Publishing a set of files as one unit: a reader sees the old set whole or the new set whole.

A set (the splits of a prepared data set and its ``manifest.json``) is written into a staging area
first; only when every file is there is it published, with the commit file (the manifest) last.

- Local: the set is built in a hidden sibling directory ``.NAME.staging.PID-XXXX`` and swapped in
  with two renames (the old directory moves aside to ``.NAME.old.PID-XXXX`` and is removed after).
  A failure, Ctrl-C or SIGTERM before the swap removes the staging directory and leaves the old set
  untouched. After a SIGKILL the next publish removes what the dead process left, and puts the old
  set back if the kill fell between the two renames.
- gs://: the files are uploaded (create-only) below ``DEST/.staging-HOST-PID-XXXX/``; then, holding
  the lock object ``DEST/.publish-lock`` (create-only, so two publishers never interleave), the old
  manifest is deleted, the staged files are copied into place server-side and the new manifest is
  created. The manifest is the commit point: while it is missing the set counts as absent
  (``parsetune run`` prepares again); a reader never sees a manifest next to files of another set.
  Staging or a lock left by a killed process on this host is removed by the next publish; from
  other hosts, once it is an hour old.

The destination belongs to the set: publishing refuses a directory that holds anything else, and
one whose files look like a set's but that has no commit file (a user's own ``train.jsonl`` is not
ours to replace). On gs:// a set withdrawn by a publish that died keeps its lock object, which marks
the files as ours until the next publish.
A local destination that is a symbolic link to a directory publishes into that directory (the link stays).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable

from parsetune import storage
from parsetune.errors import UserError

STALE_S = 3600  # gs:// staging or lock from another host counts as abandoned after this (a publish takes seconds)
LOCK_NAME = ".publish-lock"


def publish(dest: str, files: dict[str, bytes], commit: str, owned: Callable[[str], bool]) -> None:
    """Replace the set at ``dest`` by ``files`` (name -> bytes), writing ``files[commit]`` last.

    ``owned(name)`` says whether an entry already in ``dest`` belongs to a set (is replaced along
    with it); any other entry makes this a one-line ``UserError`` before anything is written.
    """
    if commit not in files:
        raise ValueError(f"the commit file {commit} is not in the set")
    storage.check_output_dir(dest)
    if storage.is_gcs(dest):
        _publish_gcs(dest.rstrip("/"), files, commit, owned)
    else:
        # a symbolic link to a directory: the set replaces the directory it points to (which must be
        # empty or hold a set, like any destination) and the link is kept; swapping the link itself
        # would fail (a rename cannot put a directory over it) or replace the link by a directory
        _publish_local(os.path.realpath(dest) if os.path.islink(dest) else os.path.abspath(dest), files, commit, owned)


def _foreign(dest: str, entries: list[str], commit: str | None = None) -> UserError:
    shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
    why = f"but no {commit}, so it is not a prepared set" if commit else "which is not part of a prepared set"
    return UserError(
        f"{dest}: holds {shown}, {why}; the whole directory is replaced, "
        "so give a new or empty one (or remove those)"
    )


# -------------------------------------------------------------------------------------- local


def _hidden(base: str, kind: str) -> str:
    return f".{base}.{kind}."


def _recover_local(parent: str, base: str, dest: str) -> None:
    """Remove staging/old directories of ``dest`` left by dead processes; restore an old set whose
    swap was cut between its two renames."""
    with contextlib.suppress(OSError):
        for entry in sorted(os.listdir(parent)):
            path = os.path.join(parent, entry)
            if not entry.startswith((_hidden(base, "staging"), _hidden(base, "old"))) or not storage.owner_is_gone(entry):
                continue
            if entry.startswith(_hidden(base, "old")) and not os.path.exists(dest):
                os.rename(path, dest)
            else:
                shutil.rmtree(path, ignore_errors=True)


def _write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _publish_local(dest: str, files: dict[str, bytes], commit: str, owned: Callable[[str], bool]) -> None:
    parent, base = os.path.split(dest)
    if os.path.isdir(dest):
        entries = os.listdir(dest)
        if not os.path.isfile(os.path.join(dest, commit)):  # not a set: nothing in it is ours
            if [e for e in entries if not _is_our_tmp(e, owned)]:
                raise _foreign(dest, [e for e in entries if not _is_our_tmp(e, owned)], commit)
        foreign = [e for e in entries if not (owned(e) and os.path.isfile(os.path.join(dest, e)) or _is_our_tmp(e, owned))]
        if foreign:
            raise _foreign(dest, foreign)
    staging = old = None
    try:
        os.makedirs(parent, exist_ok=True)
        _recover_local(parent, base, dest)
        staging = tempfile.mkdtemp(prefix=_hidden(base, "staging") + f"{os.getpid()}-", dir=parent)
        for name in sorted(files, key=lambda n: n == commit):
            _write_file(os.path.join(staging, name), files[name])
        os.chmod(staging, 0o777 & ~_umask())
        if os.path.exists(dest):
            old = tempfile.mkdtemp(prefix=_hidden(base, "old") + f"{os.getpid()}-", dir=parent)
            os.rename(dest, old)  # replaces the empty placeholder directory
        os.rename(staging, dest)
        staging = None
    except OSError as err:
        raise UserError(f"{dest}: cannot write ({err.strerror or err})") from err
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
            if old is not None and not os.path.exists(dest):
                with contextlib.suppress(OSError):
                    os.rename(old, dest)
                    old = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _is_our_tmp(entry: str, owned: Callable[[str], bool]) -> bool:
    """``.NAME.XXXX.tmp`` of an owned NAME (left when files were written in place, before staging)."""
    match = re.fullmatch(r"\.(.+?\.jsonl?)\..+\.tmp", entry)
    return bool(match) and owned(match.group(1))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------------------------- GCS


def _staging_prefix() -> str:
    return f".staging-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _lock_text() -> str:
    return f"{socket.gethostname()} {os.getpid()}\n"


def _abandoned(info: storage.ObjectInfo, relative: str) -> bool:
    """A staging object or lock left by a process that is gone (this host) or long silent (any host)."""
    if info.age_s > STALE_S:
        return True
    if relative == LOCK_NAME:
        with contextlib.suppress(UserError, ValueError):
            host, pid = storage.read_text(info.path).split()
            return host == socket.gethostname() and not storage.process_is_running(int(pid))
        return False
    host = f".staging-{socket.gethostname()}-"
    if relative.startswith(host):
        pid = relative[len(host) :].split("-")[0]
        return pid.isdigit() and not storage.process_is_running(int(pid))
    return False


def _publish_gcs(dest: str, files: dict[str, bytes], commit: str, owned: Callable[[str], bool]) -> None:
    prefix = dest + "/"
    existing = {info.path[len(prefix) :]: info for info in storage.list_objects(prefix)}
    foreign = [r for r in existing if not (owned(r) or r.startswith(".staging-") or r == LOCK_NAME)]
    if foreign:
        raise _foreign(dest, foreign)
    files_of_a_set = [r for r in existing if not (r.startswith(".staging-") or r == LOCK_NAME)]
    if files_of_a_set and commit not in existing and LOCK_NAME not in existing:  # no set of ours, none withdrawn
        raise _foreign(dest, files_of_a_set, commit)
    for relative, info in existing.items():
        if (relative.startswith(".staging-") or relative == LOCK_NAME) and _abandoned(info, relative):
            storage.delete(info.path, if_generation_match=info.generation)
    staging = prefix + _staging_prefix() + "/"
    staged: list[str] = []
    try:
        for name in files:
            if name != commit:
                storage.create_bytes(staging + name, files[name])
                staged.append(staging + name)
        lock = prefix + LOCK_NAME
        try:
            lock_generation = storage.create_bytes(lock, _lock_text().encode())
        except UserError as err:
            raise UserError(f"{dest}: another prep is publishing here right now ({lock} exists); try again when it is done") from err
        withdrawn = False  # while True, a failure keeps the lock: it marks the withdrawn files as ours
        try:
            old_commit = storage.generation(prefix + commit)
            if old_commit is not None:
                withdrawn = True
                storage.delete(prefix + commit, if_generation_match=old_commit)  # from here the old set is withdrawn
            for relative in existing:
                if owned(relative) and relative != commit and relative not in files:
                    storage.delete(prefix + relative)
            for path in staged:
                storage.copy_object(path, prefix + path[len(staging) :])
            storage.create_bytes(prefix + commit, files[commit])  # the commit point
            withdrawn = False
        finally:
            if not withdrawn:
                storage.delete(lock, if_generation_match=lock_generation)
    finally:
        for path in staged:
            with contextlib.suppress(UserError):
                storage.delete(path)
