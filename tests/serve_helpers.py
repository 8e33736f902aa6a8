"""A tiny run dir to serve, and ``parsetune serve`` as a real subprocess on a free port."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from conftest import REPO

RUN_CONFIG = {
    "model": "hf",
    "prep": {"task": "viggo", "instruction": ""},
    "eval": {"constrain": "viggo", "schema": None},
}


def make_tiny_run(model_dir: Path, out: Path) -> Path:
    """A run dir as `parsetune run` leaves it, around the tiny model: hf/, config.yaml, prep/ (the
    bundled ViGGO prepared with learned value sets in its manifest)."""
    from prep.prepare import PrepRequest, prepare

    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(model_dir, out / "hf", dirs_exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(RUN_CONFIG))
    prepare(PrepRequest(task="viggo", out=str(out / "prep"), instruction=""))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(target: Path, *args: str, ready_timeout: float = 180.0):
    """``parsetune serve TARGET`` in a subprocess; yields its base URL once /health answers."""
    import httpx

    import tempfile

    port = free_port()
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "parsetune", "serve", str(target), "--port", str(port), "--no-warmup", "--log-level", "warning", *args],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + ready_timeout
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise AssertionError(f"parsetune serve exited {proc.returncode}: {log.read()[-3000:]}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise AssertionError("parsetune serve did not answer /health in time")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
