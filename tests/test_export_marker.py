"""Re-exporting into a gs:// hf/ that holds an older export: interrupted half-way, it must not look
finished (the old parsetune_export.json goes first, the new one comes last)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

from conftest import REPO

REEXPORT = textwrap.dedent(
    """
    import os, signal, sys
    from google.cloud.storage import Blob
    from pipelines.export import publish

    real, calls = Blob.upload_from_string, []

    def upload(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)  # the host dies in the middle of the re-export
        return real(*args, **kwargs)

    Blob.upload_from_string = upload
    staging, out = sys.argv[1], sys.argv[2]
    publish(staging, out, {"kind": "merged-hf", "step": 2})
    """
)


def test_interrupted_gcs_reexport_does_not_look_finished(gcs_bucket, tmp_path):
    for name, data in {"config.json": b"{}", "model.safetensors": b"old", "parsetune_export.json": b'{"step": 1}'}.items():
        gcs_bucket.blob(f"run/hf/{name}").upload_from_string(data)
    staging = tmp_path / "staging"
    staging.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (staging / name).write_bytes(b"new " + name.encode())
    out = f"gs://{gcs_bucket.name}/run/hf"
    child = subprocess.run([sys.executable, "-c", REEXPORT, str(staging), out], cwd=REPO, env=os.environ.copy(), capture_output=True, text=True)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    assert gcs_bucket.get_blob("run/hf/parsetune_export.json") is None  # not a finished export

    child = subprocess.run([sys.executable, "-c", REEXPORT.replace("len(calls) == 2", "False"), str(staging), out], cwd=REPO, env=os.environ.copy(), capture_output=True, text=True)
    assert child.returncode == 0, child.stderr[-2000:]
    assert json.loads(gcs_bucket.get_blob("run/hf/parsetune_export.json").download_as_bytes())["step"] == 2
    assert gcs_bucket.get_blob("run/hf/model.safetensors").download_as_bytes() == b"new model.safetensors"
