"""Helpers for the training tests: tiny prepared data, tiny configs, running `parsetune train`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import ASSETS, REPO


def prepare_tiny_data(out: Path, tokenizer_dir: Path) -> Path:
    validation = ASSETS / "viggo_validation_50.jsonl"
    train = out.parent / f"{out.name}-train-source.jsonl"  # prep refuses one file as two splits
    train.parent.mkdir(parents=True, exist_ok=True)
    train.write_bytes(validation.read_bytes())
    result = subprocess.run(
        [sys.executable, "-m", "parsetune", "prep", "viggo", "--train", str(train), "--validation", str(validation),
         "--instruction", "", "--out", str(out)],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    return out


def tiny_config(path: Path, model: Path, data: Path, run_dir: Path, method: dict, **trainer) -> Path:
    config = {
        "model": str(model),
        "method": method,
        "data": {"train": str(data / "train.jsonl"), "validation": str(data / "validation.jsonl"), "max_seq_len": 256, "max_eval_examples": 8},
        "trainer": {
            "train_batch_size": 4,
            "num_train_steps": 6,
            "steps_per_eval": 3,
            "require_accelerator": False,
            "mp": "p=f32,c=f32",
            "checkpointer": {"save_interval": "1000m", "keep": [{"every": 2}]},
            **trainer,
        },
        "optimizer": {"learning_rate": 5e-3, "weight_decay": 0.0, "warmup": 0.0},
        "run_dir": str(run_dir),
        "wandb_mode": "offline",
        "task_eval": {"examples": 0},  # generation during training: its own test (test_task_eval.py)
    }
    path.write_text(yaml.safe_dump(config))
    return path


def run_train(config: Path, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "parsetune", "train", str(config), *overrides],
        capture_output=True, text=True, cwd=REPO, env=full_env,
    )


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["train_loss"] for r in metrics(run_dir) if "train_loss" in r}
