"""What ``parsetune tpu setup`` installs on the workers, from the ``source`` setting.

- ``local`` (default): this checkout's committed tree (``HEAD``) as a source archive, made with
  ``git archive`` (offline, no build tools needed here); pip/uv builds it on each worker.
- a path to a ``.whl`` / ``.tar.gz`` / ``.zip`` you built (``pip wheel --no-deps .``): copied as is.
- anything else is a pip requirement: ``git+https://host/repo@REF`` (becomes ``parsetune @ git+...``),
  ``parsetune==0.1.0``, an ``https://`` URL.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from infra import remote
from parsetune.errors import UserError

ARCHIVE_NAME = "parsetune-src.tar.gz"
SAFE_FILE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
FILE_SUFFIXES = (".whl", ".tar.gz", ".zip")


@dataclass(frozen=True)
class Package:
    requirement: str | None = None  # a pip requirement installed as is
    local_file: str | None = None  # a local file copied to every worker...
    remote_file: str | None = None  # ...to this path (relative to the worker's home)
    build_argv: list[str] | None = None  # local command that creates local_file first
    describe: str = ""


def repo_root() -> Path:
    """The checkout this code runs from (must be a git checkout with a pyproject.toml)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file() or not (root / ".git").exists():
        raise UserError(
            f"{root} is not a git checkout of parsetune: pass --source git+https://...@REF, a wheel, or a pip requirement"
        )
    return root


def uncommitted_changes(root: Path) -> bool:
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return False
    return bool(out.strip())


def resolve(source: str, tmpdir: str) -> Package:
    if source == "local":
        root = repo_root()
        archive = os.path.join(tmpdir, ARCHIVE_NAME)
        argv = ["git", "-C", str(root), "archive", "--format=tar.gz", "--prefix=parsetune/", "-o", archive, "HEAD"]
        return Package(
            local_file=archive, remote_file=f"{remote.DIST}/{ARCHIVE_NAME}", build_argv=argv,
            describe=f"the committed tree (HEAD) of {root}",
        )  # fmt: skip
    if source.endswith(FILE_SUFFIXES) and not re.match(r"^[a-z+]+://", source):
        if not os.path.isfile(source):
            raise UserError(f"setup source {source}: no such file")
        name = os.path.basename(source)
        if not SAFE_FILE_RE.fullmatch(name):
            raise UserError(f"setup source {source}: rename it to letters, digits and ._+- only")
        return Package(local_file=source, remote_file=f"{remote.DIST}/{name}", describe=source)
    if source.startswith("git+"):
        return Package(requirement=f"parsetune @ {source}", describe=source)
    return Package(requirement=source, describe=source)
