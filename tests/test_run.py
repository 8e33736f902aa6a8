"""`parsetune run`: base model decision, and the whole chain on the tiny model (skipping on rerun)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from conftest import ASSETS, REPO
from parsetune.errors import UserError
from pipelines.run import base_model_action
from train_helpers import tiny_config


def test_base_model_action(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # the README's default: a relative path that also looks like a hub id is fetched, not looked up on the hub
    assert base_model_action("models/smollm2-135m-instruct", "smollm2") == "fetch"
    assert base_model_action(str(tiny_model_dir), "smollm2") == "ready"
    assert base_model_action("gs://bucket/models/x", "smollm2") == "ready"
    assert base_model_action("HuggingFaceTB/SmolLM2-135M-Instruct", None) == "ready"
    with pytest.raises(UserError, match="prep.base_model is not set"):
        base_model_action(str(tmp_path / "nothing"), None)


@pytest.mark.slow
@pytest.mark.parametrize("method", [{"type": "lora", "r": 4, "alpha": 8}, {"type": "prompt_tuning", "num_virtual_tokens": 4}], ids=["lora", "prompt_tuning"])
def test_run_end_to_end_then_rerun_skips_every_step(tmp_path, tiny_model_dir, method):
    config_path = tiny_config(tmp_path / "config.yaml", tiny_model_dir, tmp_path / "unused", tmp_path / "run", method,
                              num_train_steps=3, steps_per_eval=3)
    config = yaml.safe_load(config_path.read_text())
    validation = str(ASSETS / "viggo_validation_50.jsonl")
    train = tmp_path / "train-source.jsonl"  # prep refuses one file as two splits
    train.write_bytes((ASSETS / "viggo_validation_50.jsonl").read_bytes())
    config["prep"] = {"task": "viggo", "train": str(train), "validation": validation, "instruction": "", "base_model": None}
    config["eval"] = {"splits": ["validation"], "batch_size": 8, "max_new_tokens": 24, "constrain": "viggo", "limit": 8}
    config_path.write_text(yaml.safe_dump(config))

    def run():
        result = subprocess.run([sys.executable, "-m", "parsetune", "run", str(config_path)], capture_output=True, text=True, cwd=REPO)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stderr

    first = run()
    run_dir = tmp_path / "run"
    exported = ("hf/config.json",) if method["type"] == "lora" else ()  # prompt tuning exports the adapter alone
    assert (run_dir / "hf").exists() == bool(exported)
    for path in ("prep/train.jsonl", "prep/manifest.json", *exported, "adapter/adapter_config.json", "metrics.jsonl",
                 "eval/validation/predictions.jsonl", "eval/validation/confusion_matrix.png", "eval/validation/confusion_matrix.csv",
                 "report.md"):
        assert (run_dir / path).exists(), path
    metrics = json.loads((run_dir / "eval/validation/metrics.json").read_text())
    assert metrics["n"] == 8 and metrics["valid_rate"] == 1.0  # constrained decoding: every prediction parses
    report = (run_dir / "report.md").read_text()
    assert "overall" in report and "confusion_matrix.png" in report
    assert "[1/5]" in first and "[5/5]" in first

    again = run()
    for skipped in ("is ready; skipping", "is already prepared; skipping", "is already exported; skipping training", "is already scored; skipping"):
        assert skipped in again, skipped
