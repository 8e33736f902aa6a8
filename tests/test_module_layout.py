"""Small modules with one job: the hub-id regex and config.json reader need no JAX; the model that
train and export both build lives outside train.py."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def test_hf_files_imports_without_jax():
    code = "import sys, parsetune.hf_files as h; assert h.is_hub_id('org/name'); print('jax' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_export_takes_the_model_from_model_loading_not_train():
    source = (REPO / "pipelines" / "checkpoint_export.py").read_text()
    assert "from pipelines.model_loading import load_model" in source
    assert "from pipelines.model_loading import lora_config_of" in source
    train = (REPO / "pipelines" / "train.py").read_text()
    assert "def load_model" not in train and "def lora_config_of" not in train
