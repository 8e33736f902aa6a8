"""Secrets (``WANDB_API_KEY``, ``HF_TOKEN``, ...) from the local environment to the workers.

They never appear on a command line, local or remote (``ps`` shows every argument): they go into
a 0600 env file in a private temp dir, gcloud scp copies it into ``parsetune/jobs/`` (mode 0700) on
each worker, the job sources it and deletes it before training starts, and the local copy is removed
when the command ends. Anything printed goes through :meth:`Secrets.mask` (:mod:`infra.masking`:
whole values, each line of a multi-line one, and their escaped forms).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shlex
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from infra.masking import MASK, Masker
from parsetune.errors import UserError


@dataclass(frozen=True)
class Secrets:
    values: dict[str, str] = field(default_factory=dict)  # name -> value; only names set (non-empty) locally

    @classmethod
    def from_environ(cls, names: tuple[str, ...], environ: Mapping[str, str] | None = None) -> "Secrets":
        environ = os.environ if environ is None else environ
        return cls({name: environ[name] for name in names if environ.get(name)})

    def require(self, names: tuple[str, ...]) -> None:
        """``UserError`` naming the first of ``names`` (secrets the user asked for by name) that is not set.

        Sending a job off without a secret it was told to get fails much later, on the TPU, or not at
        all (a W&B run logged nowhere); an unset name is a typo or a forgotten ``export``.
        """
        for name in names:
            if name not in self.values:
                raise UserError(f"secret {name} (--secret or tpu.secrets) is not set or empty in this environment: "
                                f"export {name}=... first, or drop it")  # fmt: skip

    def env_file_text(self) -> str:
        """``NAME='value'`` lines for ``set -a; . FILE; set +a``."""
        return "".join(f"{name}={shlex.quote(value)}\n" for name, value in self.values.items())

    def describe(self) -> str:
        """What the env file holds, masked: ``WANDB_API_KEY=**** HF_TOKEN=****`` (or 'no secrets')."""
        return " ".join(f"{name}={MASK}" for name in self.values) or "no secrets"

    @functools.cached_property
    def _masker(self) -> Masker:
        return Masker(self.values.values())

    def mask(self, text: str) -> str:
        """``text`` with every secret replaced by ``****``: whole, line by line, and escaped (:class:`Masker`).

        Every non-empty value is masked, however short: a 3-character secret is still a secret (and a
        short one may mask innocent text too; better than printing it).
        """
        return self._masker(text)


@contextlib.contextmanager
def private_dir() -> Iterator[str]:
    """A fresh 0700 temp dir, removed with everything in it on exit (also on errors and Ctrl-C)."""
    path = tempfile.mkdtemp(prefix="parsetune-tpu-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_env_file(directory: str, name: str, secrets: Secrets) -> str:
    """Create ``directory/name`` with mode 0600 from the start (never world-readable, not even briefly)."""
    path = os.path.join(directory, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(secrets.env_file_text())
    return path
