"""`parsetune run` with ``run_dir: gs://...`` (the GCS emulator) on the tiny model, end to end: data
prepared into the bucket, training + export, generate, score and report all as objects."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from conftest import ASSETS, REPO
from train_helpers import tiny_config


@pytest.mark.slow
def test_run_with_a_gcs_run_dir_end_to_end(gcs_bucket, gcs_emulator, tiny_model_dir, tmp_path):
    run_dir = f"gs://{gcs_bucket.name}/runs/tiny"
    config_path = tiny_config(tmp_path / "config.yaml", tiny_model_dir, tmp_path / "unused", run_dir, {"type": "lora", "r": 4, "alpha": 8},
                              num_train_steps=2, steps_per_eval=2)
    config = yaml.safe_load(config_path.read_text())
    assert config["run_dir"] == run_dir
    train = tmp_path / "train-source.jsonl"  # prep refuses one file as two splits
    train.write_bytes((ASSETS / "viggo_validation_50.jsonl").read_bytes())
    config["prep"] = {"task": "viggo", "train": str(train), "validation": str(ASSETS / "viggo_validation_50.jsonl"), "instruction": "", "base_model": None}
    config["eval"] = {"splits": ["validation"], "batch_size": 4, "max_new_tokens": 16, "constrain": "viggo", "limit": 4}
    config_path.write_text(yaml.safe_dump(config))
    env = {
        **os.environ,  # STORAGE_EMULATOR_HOST from the gcs_bucket fixture
        "TENSORSTORE_GCS_HTTP_URL": gcs_emulator,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "dummy",
        "PARSETUNE_MODEL_CACHE": str(tmp_path / "model-cache"),
        "PARSETUNE_COMPILATION_CACHE": "off",
    }

    def run() -> str:
        result = subprocess.run([sys.executable, "-m", "parsetune", "run", str(config_path)], capture_output=True, text=True, cwd=REPO, env=env)
        assert result.returncode == 0, result.stderr[-5000:]
        assert "[5/5]" in result.stderr and f"wrote {run_dir}/report.md" in result.stderr
        return result.stderr

    run()

    blobs = {b.name: b for b in gcs_bucket.client.list_blobs(gcs_bucket.name)}
    for name in ("prep/train.jsonl", "prep/validation.jsonl", "prep/manifest.json", "config.yaml", "metrics.jsonl",
                 "hf/config.json", "hf/model.safetensors", "hf/parsetune_export.json", "adapter/adapter_config.json",
                 "eval/validation/predictions.jsonl", "eval/validation/metrics.json", "eval/validation/confusion_matrix.png",
                 "report.md"):
        assert f"runs/tiny/{name}" in blobs, name
    predictions = [json.loads(line) for line in blobs["runs/tiny/eval/validation/predictions.jsonl"].download_as_text().splitlines()]
    assert len(predictions) == 4 and all(set(p) == {"id", "input", "reference", "prediction"} for p in predictions)
    metrics = json.loads(blobs["runs/tiny/eval/validation/metrics.json"].download_as_text())
    assert metrics["n"] == 4 and metrics["valid_rate"] == 1.0  # constrained decoding: every prediction parses
    report = blobs["runs/tiny/report.md"].download_as_text()
    assert "overall" in report and "](eval/validation/confusion_matrix.png)" in report  # relative: works after a copy down
    assert os.listdir(tmp_path / "model-cache") and not (tmp_path / "unused").exists()  # the exported model came through the cache

    # a rerun finds every step complete in the bucket and rewrites only the report
    kept = ("prep/manifest.json", "hf/model.safetensors", "eval/validation/predictions.jsonl", "eval/validation/metrics.json")
    generations = {name: blobs[f"runs/tiny/{name}"].generation for name in kept}
    again = run()
    for skipped in ("is already prepared; skipping", "is already exported; skipping training", "is already scored; skipping"):
        assert skipped in again, skipped
    assert {name: gcs_bucket.get_blob(f"runs/tiny/{name}").generation for name in kept} == generations
