"""Running commands (or, with ``--dry-run``, only printing them), with progress and clean errors.

Every command is printed before it runs, shlex-joined so it can be copied into a shell. In a dry
run the output is itself a shell script: steps are ``# comments``, commands are bare lines, nothing
runs. Every printed line and relayed error passes through :meth:`Secrets.mask` (whole secrets, each
line of a multi-line one, escaped forms: :mod:`infra.masking`).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TextIO

from infra.masking import escape_controls
from infra.secrets import Secrets
from parsetune.errors import UserError

INSTALL_HINT = "install the Google Cloud SDK (https://cloud.google.com/sdk/docs/install) and put gcloud on PATH"
MAX_PARALLEL = 8


@dataclass
class Result:
    argv: list[str]
    rc: int
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.rc == 0


def one_line(text: str) -> str:
    """``text`` with every control character (newline, carriage return, escape, ...) written as ``\\n``, ``\\x1b``, ..."""
    return escape_controls(text)


def error_line(stderr: str) -> str:
    """gcloud's own error message: its first ``ERROR:`` line, else the last non-empty line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("ERROR:"):
            return line[len("ERROR:") :].strip()
    return lines[-1] if lines else "no error output"


@dataclass
class Runner:
    dry_run: bool = False
    secrets: Secrets = field(default_factory=Secrets)
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)

    def say(self, text: str, *, to_err: bool = False) -> None:
        print(self.secrets.mask(text), file=self.err if to_err else self.out, flush=True)

    def step(self, message: str) -> None:
        """Progress: what happens next (a comment line in a dry run).

        Control characters (a newline in a path, a config name or ``tpu.run_dir``) are escaped, so the
        message stays one line: in a dry run's script, a raw newline would end the ``#`` comment and make
        the rest of the value a command.
        """
        self.say(("# " if self.dry_run else "==> ") + one_line(message))

    def show(self, argv: list[str]) -> None:
        """Print ``argv``; a real run abbreviates a multi-line ``--command`` script (``--dry-run`` prints it whole)."""
        if self.dry_run:
            self.say(shlex.join(argv))
            return
        shown = []
        for a in argv:
            if a.startswith("--command=") and "\n" in a.strip():
                a = f"--command=<{a.strip().count(chr(10)) + 1}-line script: see --dry-run>"
            shown.append(a)
        self.say("$ " + shlex.join(shown))

    def check_gcloud(self) -> None:
        if self.dry_run:
            return
        if shutil.which("gcloud") is None:
            raise UserError(f"gcloud not found on PATH: {INSTALL_HINT}")

    def run(self, argv: list[str], *, what: str, capture: bool = False, check: bool = True, show: bool = True) -> Result:
        """Run ``argv``; ``capture`` keeps stdout (else it streams to the terminal, masked).

        stderr is always read so a failure can be reported; without ``capture`` it is relayed live.
        Streamed output passes through :meth:`Secrets.mask` line by line (a job's log can print a
        secret; ``tpu logs --follow`` must not show it). With ``check``, a non-zero exit raises
        ``UserError("WHAT failed: <gcloud's error line>")``.
        """
        if show:
            self.show(argv)
        if self.dry_run:
            return Result(argv, 0)
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL if capture else None,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
            )
        except FileNotFoundError as err:
            hint = INSTALL_HINT if argv[0] == "gcloud" else "is it installed?"
            raise UserError(f"{argv[0]} not found: {hint}") from err
        if capture:
            stdout, stderr = proc.communicate()
        else:
            kept: list[str] = []
            relay_err = threading.Thread(target=self._relay, args=(proc.stderr, self.err, kept), daemon=True)
            relay_err.start()
            self._relay(proc.stdout, self.out, None)
            relay_err.join()
            proc.wait()
            stdout, stderr = "", "".join(kept[-200:])
        result = Result(argv, proc.returncode, stdout or "", stderr or "")
        if check and not result.ok:
            raise UserError(f"{what} failed: {self.secrets.mask(error_line(result.stderr))}")
        return result

    def _relay(self, stream, to: TextIO, keep: list[str] | None) -> None:
        assert stream is not None
        for line in stream:
            if keep is not None:
                keep.append(line)
            to.write(self.secrets.mask(line))
            to.flush()

    def run_many(self, argvs: list[list[str]], *, what: str, show: bool = True) -> list[Result]:
        """Run several commands at once (one per worker), capturing output; results in order, never raises."""
        for argv in argvs:
            if show:
                self.show(argv)
        if self.dry_run:
            return [Result(argv, 0) for argv in argvs]
        with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, max(1, len(argvs)))) as pool:
            return list(pool.map(lambda a: self.run(a, what=what, capture=True, check=False, show=False), argvs))
