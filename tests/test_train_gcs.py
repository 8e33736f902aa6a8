"""RUN_DIR on gs:// (a real GCS emulator): checkpoints through tensorstore, kill + exact resume,
metrics, config and the merged export as objects."""

from __future__ import annotations

import json

import numpy as np
import pytest

from train_helpers import prepare_tiny_data, run_train, tiny_config, train_losses

pytestmark = pytest.mark.slow
METHOD = {"type": "lora", "r": 4, "alpha": 8}


def test_gcs_run_dir_resumes_exactly_and_exports(gcs_bucket, gcs_emulator, tiny_model_dir, tmp_path):
    env = {"STORAGE_EMULATOR_HOST": gcs_emulator, "TENSORSTORE_GCS_HTTP_URL": gcs_emulator, "GOOGLE_AUTH_TOKEN_FOR_TESTING": "dummy"}
    data = prepare_tiny_data(tmp_path / "data", tiny_model_dir)
    overrides = ("--trainer.num_train_steps", "8")
    local = tiny_config(tmp_path / "local.yaml", tiny_model_dir, data, tmp_path / "local", METHOD)
    assert run_train(local, *overrides).returncode == 0

    run_dir = f"gs://{gcs_bucket.name}/runs/tiny"
    remote = tiny_config(tmp_path / "remote.yaml", tiny_model_dir, data, tmp_path / "unused", METHOD)
    killed = run_train(remote, *overrides, "--run_dir", run_dir, env={**env, "PARSETUNE_FAULT_KILL_AFTER_STEP": "4"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    names = {b.name for b in gcs_bucket.client.list_blobs(gcs_bucket.name)}
    assert "runs/tiny/checkpoints/step-4/metadata.json" in names
    assert not any(n.startswith("runs/tiny/hf/") for n in names), "no export before the run finished"

    resumed = run_train(remote, *overrides, "--run_dir", run_dir, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {run_dir}/checkpoints at step 5" in resumed.stderr

    blobs = {b.name: b for b in gcs_bucket.client.list_blobs(gcs_bucket.name)}
    rows = [json.loads(line) for line in blobs["runs/tiny/metrics.jsonl"].download_as_text().splitlines()]
    remote_losses = {r["step"]: r["train_loss"] for r in rows if "train_loss" in r}
    expected = train_losses(tmp_path / "local")
    assert sorted(remote_losses) == list(range(8))
    for step, loss in expected.items():
        assert remote_losses[step] == pytest.approx(loss, abs=1e-6)
    assert "runs/tiny/config.yaml" in blobs and "runs/tiny/adapter/adapter_model.safetensors" in blobs
    assert json.loads(blobs["runs/tiny/hf/parsetune_export.json"].download_as_text())["completed_steps"] == 8

    # the merged weights on gs:// are the ones the local run exported
    from safetensors.numpy import load

    remote_weights = load(blobs["runs/tiny/hf/model.safetensors"].download_as_bytes())
    local_weights = load((tmp_path / "local" / "hf" / "model.safetensors").read_bytes())
    assert remote_weights.keys() == local_weights.keys()
    for name in local_weights:
        np.testing.assert_allclose(remote_weights[name], local_weights[name], atol=1e-6)
