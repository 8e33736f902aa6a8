"""The ``manifest.json`` of a prepared data set (written by ``prep.writer``): the one reader.

It describes the set beside it: splits, prompt format (instruction, query template), attribution,
and what later steps learn from it (``viggo_values``, the JSON ``schema`` file). The decoder's
grounding, the JSON schema lookup and the server's prompt format all read it through here.
"""

from __future__ import annotations

import json
import os
import posixpath

from parsetune import storage
from parsetune.errors import UserError

MANIFEST_NAME = "manifest.json"


def set_dir_of(data_path: str) -> str:
    """The directory of a prepared split file (local paths made absolute), where its manifest is."""
    return posixpath.dirname(data_path) if storage.is_gcs(data_path) else os.path.dirname(os.path.abspath(data_path))


def manifest_path(directory: str) -> str:
    return storage.join(directory, MANIFEST_NAME)


def read_manifest(directory: str) -> dict | None:
    """The manifest of the prepared set in ``directory``; None when there is none. A manifest that is
    not a JSON object is a one-line error naming it."""
    path = manifest_path(directory)
    if not storage.exists(path):
        return None
    try:
        manifest = json.loads(storage.read_text(path))
    except (ValueError, RecursionError) as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(manifest, dict):
        raise UserError(f"{path}: expected a JSON object, found {type(manifest).__name__}")
    return manifest


def manifest_beside(data_path: str) -> tuple[dict | None, str]:
    """``(manifest or None, its path)`` of the prepared split file ``data_path``."""
    directory = set_dir_of(data_path)
    return read_manifest(directory), manifest_path(directory)
