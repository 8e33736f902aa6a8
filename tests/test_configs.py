"""Every shipped config parses into a TrainConfig and opens with its exact launch command."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import pytest

from conftest import REPO
from pipelines.config import FullConfig, LoraMethodConfig
from pipelines.train import parse_config

CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def test_there_are_cpu_and_tpu_configs_for_both_methods():
    names = {p.name for p in CONFIGS}
    assert {"smollm2_lora_cpu.yaml", "smollm2_full_cpu.yaml", "llama2_7b_full_tpu.yaml", "llama2_7b_lora_tpu.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_parses_and_documents_its_launch(path: Path):
    config = parse_config(str(path), [])
    header = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
    assert f"parsetune train {path.relative_to(REPO)}" in header or f"--config {path.relative_to(REPO)}" in header
    assert config.trainer.mp is not None
    if "tpu" in path.name:
        assert config.tpu and config.tpu.accelerator_type
        assert config.run_dir.startswith("gs://") and config.data.train.startswith("gs://")
        assert config.trainer.tensor_parallel_axes == ["mlp", "heads", "kv_head", "vocab"]
    else:
        assert config.trainer.require_accelerator is False


def test_tpu_recipes_match_the_reference_tutorial():
    full = parse_config(str(REPO / "configs/viggo/llama2_7b_full_tpu.yaml"), [])
    assert isinstance(full.method, FullConfig)
    assert (full.trainer.train_batch_size, full.trainer.num_train_steps, full.optimizer.learning_rate) == (128, 80, 2e-5)
    assert jnp.dtype(full.trainer.mp.compute_dtype) == jnp.bfloat16 and jnp.dtype(full.trainer.mp.param_dtype) == jnp.float32
    lora = parse_config(str(REPO / "configs/viggo/llama2_7b_lora_tpu.yaml"), [])
    assert isinstance(lora.method, LoraMethodConfig)
    assert (lora.method.r, lora.method.alpha, lora.method.dropout) == (8, 8, 0.0)
    assert (lora.optimizer.learning_rate, lora.optimizer.weight_decay, lora.trainer.num_train_steps) == (3e-4, 0.1, 120)


def test_overrides_reach_the_config():
    config = parse_config(str(REPO / "configs/viggo/smollm2_lora_cpu.yaml"), ["--run_dir", "runs/x", "--trainer.num_train_steps", "5", "--method.r", "4"])
    assert (config.run_dir, config.trainer.num_train_steps, config.method.r) == ("runs/x", 5, 4)


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.name.endswith("_cpu.yaml")], ids=lambda p: p.name)
def test_cpu_config_trains_on_what_parsetune_run_prepares(path: Path):
    """`parsetune train CONFIG` after `parsetune run CONFIG` reads the splits that run prepared."""
    from pipelines.run import prepared_splits

    config = parse_config(str(path), [])
    assert (config.data.train, config.data.validation) == prepared_splits(config.run_dir)
    header = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
    assert "data/viggo" not in header and f"parsetune prep {config.prep.task} --out {config.run_dir}/prep" in header


@pytest.mark.parametrize("path", [p for p in CONFIGS if "tpu" in p.name], ids=lambda p: p.name)
def test_the_tpu_section_is_one_type_for_train_and_tpu(path: Path):
    from infra.settings import read_tpu_section
    from parsetune.tpu_section import TpuSection

    section = parse_config(str(path), []).tpu
    assert isinstance(section, TpuSection) and section.given() == read_tpu_section(str(path))


def launch_lines(path: Path) -> list[list[str]]:
    """The `parsetune run|train THIS_CONFIG ...` command lines of a config's header (the indented
    ones: `#   command`), continuation lines joined, as the arguments after the config path."""
    import shlex

    commands, pending = [], ""
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if not (pending or line.startswith("#  ")):
            continue
        text = pending + line[1:].strip()
        if text.endswith("\\"):
            pending = text[:-1] + " "
            continue
        pending = ""
        words = shlex.split(text)
        for i, word in enumerate(words[:-2]):
            if word == "parsetune" and words[i + 1] in ("run", "train") and words[i + 2] == str(path.relative_to(REPO)):
                commands.append(words[i + 3 :])
    return commands


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_launch_line_in_the_header_parses(path: Path):
    """A documented command line whose override is misspelt or mistyped would fail only when a user
    runs it: each one parses here (`--quick` and `--hosts N` are options of the command itself)."""
    from pipelines.cli import take_option

    commands = launch_lines(path)
    assert commands
    for args in commands:
        _, overrides = take_option([a for a in args if a != "--quick"], "--hosts")
        parse_config(str(path), overrides)


def test_the_lora_header_documents_the_full_quality_setting():
    lines = launch_lines(REPO / "configs/viggo/smollm2_lora_cpu.yaml")
    full_quality = [args for args in lines if "runs/smollm2-lora-1h" in args]
    assert len(full_quality) == 1
    config = parse_config(str(REPO / "configs/viggo/smollm2_lora_cpu.yaml"), full_quality[0])
    assert config.trainer.num_train_steps > 2 * parse_config(str(REPO / "configs/viggo/smollm2_lora_cpu.yaml"), []).trainer.num_train_steps
