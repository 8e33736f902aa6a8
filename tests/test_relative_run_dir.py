"""A relative run_dir (the README's `runs/...`): Levanter's clean-up of temporary checkpoints must
find them (it used to build runs/x/checkpoints/runs/x/checkpoints/step-N and print a traceback)."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml

from conftest import REPO
from train_helpers import prepare_tiny_data, tiny_config


def test_temporary_checkpoints_of_a_relative_run_dir_are_deleted(tmp_path, tiny_model_dir):
    data = prepare_tiny_data(tmp_path / "data", tiny_model_dir)
    path = tiny_config(tmp_path / "c.yaml", tiny_model_dir, data, tmp_path / "unused", {"type": "full"},
                       num_train_steps=4, steps_per_eval=100)
    config = yaml.safe_load(path.read_text())
    config["run_dir"] = "runs/rel"
    config["export"] = False
    config["trainer"]["checkpointer"] = {"save_interval": "0.001s", "keep": [{"every": 1000}]}  # a temporary one every step
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "parsetune", "train", str(path)], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Failed to delete" not in result.stderr, result.stderr[-3000:]
    checkpoints = tmp_path / "runs" / "rel" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-3"], "temporary step-1, step-2 deleted; the final (step-3: 4 steps done) kept"
    assert not (checkpoints / "runs").exists()
    saved = yaml.safe_load((tmp_path / "runs" / "rel" / "config.yaml").read_text())
    assert saved["run_dir"] == "runs/rel"
