"""The only place eval touches storage: read a text file, write a file atomically.

Local paths only for now; a ``gs://`` branch (fsspec) belongs here and nowhere else.
"""

from __future__ import annotations

import os
import tempfile

from parsetune.errors import UserError


def read_text(path: str) -> str:
    """Return the UTF-8 text of ``path``; ``UserError`` if it is missing, unreadable or not UTF-8."""
    if "://" in path:
        raise UserError(f"{path}: only local paths are supported by eval for now")
    try:
        with open(path, encoding="utf-8-sig") as f:  # tolerate a BOM
            return f.read()
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a file") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None


def check_output_dir(out_dir: str) -> None:
    """``UserError`` unless ``out_dir`` is a local directory or does not exist yet (creates nothing)."""
    if "://" in out_dir:
        raise UserError(f"{out_dir}: only local output directories are supported by eval for now")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"{out_dir}: exists and is not a directory")


def write_files_atomic(out_dir: str, files: dict[str, bytes]) -> list[str]:
    """Create ``out_dir`` if needed and write each ``name -> content`` atomically: every file is
    first written to a temp file in ``out_dir``, and only when all are staged are they moved into
    place with ``os.replace``. Returns the written paths in order."""
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{out_dir}: cannot create output directory ({exc.strerror})") from None
    staged: list[tuple[str, str]] = []
    try:
        for name, data in files.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out_dir)
            staged.append((tmp, os.path.join(out_dir, name)))
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o644)
                f.write(data)
        for tmp, final in staged:
            os.replace(tmp, final)
    except OSError as exc:
        raise UserError(f"{out_dir}: cannot write outputs ({exc.strerror or exc})") from None
    finally:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return [final for _, final in staged]
