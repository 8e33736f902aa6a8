"""The recording gcloud stand-in as a fixture, and helpers shared by the ``parsetune tpu`` tests."""

from __future__ import annotations

import glob
import json
import os
import shlex
import signal
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import ASSETS
from parsetune.cli import main

FAKE_WORKER = Path(__file__).parent / "fake_worker"
CONFIG = str(ASSETS / "tpu_config.yaml")
WHERE = ["--name", "viggo-lora", "--zone", "us-central2-b"]
ONE_HOST = [*WHERE, "--accelerator-type", "v3-8"]  # tpu_config.yaml says v4-32 (4 workers: needs a gs:// run dir)
GS_RUN = ["--run-dir", "gs://some-bucket/runs/x"]  # submit never touches the run dir itself
SECRET, HF_SECRET = "secret123", "hf_Sup3rSecretToken"


class Fake:
    def __init__(self, root: Path):
        self.root = root

    def calls(self) -> list[dict]:
        path = self.root / "calls.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def argvs(self) -> list[list[str]]:
        return [c["argv"] for c in self.calls()]

    def home(self, worker: int, name: str = "viggo-lora") -> Path:
        return self.root / name / f"worker-{worker}"

    def commands(self) -> list[str]:
        return [a.partition("=")[2] for argv in self.argvs() for a in argv if a.startswith("--command=")]

    def reset(self) -> None:
        (self.root / "calls.jsonl").unlink(missing_ok=True)

    def kill_jobs(self) -> None:
        pids = glob.glob(str(self.root / "*" / "worker-*" / "parsetune" / "jobs" / "*.pid")) + glob.glob(str(self.root / "preempter.pids"))
        for pid_file in pids:
            for pid in Path(pid_file).read_text().split():
                try:
                    os.killpg(int(pid), signal.SIGKILL)
                except (OSError, ValueError):
                    pass


@pytest.fixture
def fake(tmp_path, monkeypatch):
    root = tmp_path / "gcloud"
    bindir = tmp_path / "bin"
    root.mkdir()
    bindir.mkdir()
    shim = bindir / "gcloud"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(Path(__file__).parent / "fake_gcloud.py"))} "$@"\n')
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_GCLOUD_DIR", str(root))
    monkeypatch.setenv("FAKE_GCLOUD_PATH", str(FAKE_WORKER))
    monkeypatch.setenv("FAKE_STUBS", str(FAKE_WORKER))
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    monkeypatch.setenv("HF_TOKEN", HF_SECRET)
    monkeypatch.chdir(tmp_path)
    f = Fake(root)
    yield f
    f.kill_jobs()


def tpu(*argv: str) -> int:
    return main(["tpu", *argv])


def strip_commands(argvs):
    """argv lists with the (long) --command text replaced by a marker."""
    return [[("--command=…" if a.startswith("--command=") else a) for a in argv] for argv in argvs]


def wait_for(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def our_temp_dirs() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "parsetune-tpu-*")))


def create_and_setup(fake, capfd, accel="v4-32"):
    assert tpu("create", *WHERE, "--accelerator-type", accel, "--spot") == 0
    assert tpu("setup", *WHERE) == 0
    capfd.readouterr()
    fake.reset()


def split_commands(out: str) -> list[str]:
    """The dry-run output is a shell script: comment lines, and commands (some spanning lines in quotes)."""
    commands, current = [], ""
    for line in out.splitlines(keepends=True):
        if not current and line.startswith("#"):
            continue
        current += line
        try:
            shlex.split(current)
        except ValueError:
            continue  # inside a quoted --command: keep reading
        commands.append(current.strip())
        current = ""
    return commands


def error_of(capfd, *argv) -> str:
    assert tpu(*argv) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert err[-1].startswith("parsetune tpu: error: ")
    return err[-1]
