"""A gs:// checkpoint as a local directory: copied once into a cache, re-used while its objects are unchanged.

The tokenizer and Levanter's loader read local files, so ``eval generate`` on a gs:// model first
copies it to ``$PARSETUNE_MODEL_CACHE`` (default ``$XDG_CACHE_HOME/parsetune/models``, i.e.
``~/.cache/parsetune/models``), into a directory named after a hash of the object names and their
generations: a re-uploaded object makes a new copy. A copy is staged and published by rename with a
``.complete`` marker; a failed copy leaves nothing behind.
"""

from __future__ import annotations

import os
import tempfile

from parsetune import storage
from parsetune.errors import UserError


def model_cache_root() -> str:
    return os.environ.get("PARSETUNE_MODEL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "parsetune", "models"
    )


def local_model_dir(model_dir: str) -> str:
    """``model_dir`` itself if local; a gs:// checkpoint is copied once into a local cache directory
    (re-used while its objects are unchanged)."""
    if not storage.is_gcs(model_dir):
        if not os.path.isdir(model_dir):
            raise UserError(f"{model_dir}: model directory not found")
        return model_dir
    objects = [o for o in storage.list_objects(model_dir.rstrip("/") + "/") if not o.path.endswith("/")]  # not "folder" placeholders
    if not objects:
        raise UserError(f"{model_dir}: no such checkpoint (no objects under it)")
    import hashlib

    prefix = model_dir.rstrip("/") + "/"
    stamp = hashlib.sha256(repr(sorted((o.path, o.generation) for o in objects)).encode()).hexdigest()[:16]
    cache_root = model_cache_root()
    target = os.path.join(cache_root, stamp)
    if os.path.isfile(os.path.join(target, ".complete")):
        return target
    try:
        os.makedirs(cache_root, exist_ok=True)
    except OSError as err:
        raise UserError(f"{cache_root}: cannot create the model cache ({err.strerror}); set PARSETUNE_MODEL_CACHE") from None
    import shutil

    staging = tempfile.mkdtemp(prefix=".download-", dir=cache_root)
    try:
        for o in objects:
            relative = o.path[len(prefix) :]
            dest = os.path.join(staging, relative)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest, "wb") as f:
                f.write(storage.read_bytes(o.path))
        open(os.path.join(staging, ".complete"), "w").close()
    except BaseException:  # a failed or interrupted copy leaves no half copy behind
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        os.rename(staging, target)
    except OSError:  # another process finished the same copy first
        shutil.rmtree(staging, ignore_errors=True)
    return target
