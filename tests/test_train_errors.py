"""Bad training input: one clear line, non-zero exit, nothing that looks like a finished run."""

from __future__ import annotations

import json

import pytest

from train_helpers import prepare_tiny_data, run_train, tiny_config


@pytest.fixture(scope="module")
def tiny_data(tiny_model_dir, tmp_path_factory):
    return prepare_tiny_data(tmp_path_factory.mktemp("data"), tiny_model_dir)


def config(tmp_path, tiny_model_dir, tiny_data, method=None):
    return tiny_config(tmp_path / "c.yaml", tiny_model_dir, tiny_data, tmp_path / "run", method or {"type": "full"})


def assert_one_line_error(result, *needles):
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("parsetune train: error:"), result.stderr[-2000:]
    for needle in needles:
        assert needle in last, last


def test_missing_data_file(tmp_path, tiny_model_dir, tiny_data):
    result = run_train(config(tmp_path, tiny_model_dir, tiny_data), "--data.train", str(tmp_path / "nope.jsonl"))
    assert_one_line_error(result, "data.train", "nope.jsonl", "does not exist")
    assert not (tmp_path / "run").exists()


def test_empty_data_file(tmp_path, tiny_model_dir, tiny_data):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = run_train(config(tmp_path, tiny_model_dir, tiny_data), "--data.train", str(empty))
    assert_one_line_error(result, "empty.jsonl: no examples")


def test_model_without_config_json(tmp_path, tiny_model_dir, tiny_data):
    (tmp_path / "notamodel").mkdir()
    result = run_train(config(tmp_path, tiny_model_dir, tiny_data), "--model", str(tmp_path / "notamodel"))
    assert_one_line_error(result, "no config.json")


def test_unknown_config_key(tmp_path, tiny_model_dir, tiny_data):
    path = config(tmp_path, tiny_model_dir, tiny_data)
    path.write_text(path.read_text() + "learning_rat: 0.1\n")
    result = run_train(path)
    assert result.returncode == 2
    assert "learning_rat" in result.stderr


def test_every_example_too_long(tmp_path, tiny_model_dir, tiny_data):
    result = run_train(config(tmp_path, tiny_model_dir, tiny_data), "--data.max_seq_len", "8")
    assert_one_line_error(result, "longer than data.max_seq_len=8")
    assert "dropped 50 of 50 examples" in result.stderr


def test_lora_regex_matching_nothing(tmp_path, tiny_model_dir, tiny_data):
    result = run_train(config(tmp_path, tiny_model_dir, tiny_data, {"type": "lora", "target_modules": ".*no_such_layer$"}))
    assert_one_line_error(result, "matches no linear layer")
    assert not (tmp_path / "run" / "hf").exists()


def test_malformed_prepared_line(tmp_path, tiny_model_dir, tiny_data):
    bad = tmp_path / "bad.jsonl"
    good = (tiny_data / "train.jsonl").read_text().splitlines()[0]
    bad.write_text(good + "\n" + json.dumps({"id": "x", "input": "p"}) + "\n")
    result = run_train(config(tmp_path, tiny_model_dir, tiny_data), "--data.train", str(bad))
    assert_one_line_error(result, "bad.jsonl:2", "'output'")


def assert_nothing_written(result, run_dir):
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert not run_dir.exists(), sorted(p.name for p in run_dir.iterdir())


def test_wandb_mode_typo_is_one_line_before_anything_is_written(tmp_path, tiny_model_dir, tiny_data):
    result = run_train(config(tmp_path, tiny_model_dir, tiny_data), "--wandb_mode", "onlien")
    assert_one_line_error(result, "wandb_mode", "'onlien'", "offline, online, disabled")
    assert_nothing_written(result, tmp_path / "run")


def test_wandb_online_without_login_is_one_line_before_anything_is_written(tmp_path, tiny_model_dir, tiny_data):
    env = {"WANDB_API_KEY": "", "NETRC": str(tmp_path / "no-netrc"), "WANDB_BASE_URL": "http://127.0.0.1:9"}
    result = run_train(config(tmp_path, tiny_model_dir, tiny_data), "--wandb_mode", "online", env=env)
    assert_one_line_error(result, "wandb_mode online", "WANDB_API_KEY", "wandb login")
    assert_nothing_written(result, tmp_path / "run")


def test_a_netrc_wandb_login_counts_as_credentials(tmp_path):
    from pipelines.wandb_check import has_wandb_login

    netrc = tmp_path / "netrc"
    assert not has_wandb_login({"NETRC": str(netrc)})
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    netrc.chmod(0o600)
    assert has_wandb_login({"NETRC": str(netrc)})
    assert not has_wandb_login({"NETRC": str(netrc), "WANDB_BASE_URL": "https://wandb.example.com"})
    assert has_wandb_login({"WANDB_API_KEY": "x", "NETRC": str(tmp_path / "none")})


def test_wrong_type_override_names_the_key_and_the_expected_type(tmp_path, tiny_model_dir, tiny_data):
    result = run_train(config(tmp_path, tiny_model_dir, tiny_data), "--trainer.train_batch_size", "abc")
    assert_one_line_error(result, "trainer.train_batch_size", "expected int", "'abc'")
    assert_nothing_written(result, tmp_path / "run")


def test_train_says_once_that_it_ignores_the_run_only_sections(tmp_path, tiny_model_dir, tiny_data):
    import yaml

    path = config(tmp_path, tiny_model_dir, tiny_data)
    document = yaml.safe_load(path.read_text())
    document.update({"tpu": {"name": "pod", "zone": "us-central2-b"}, "eval": {"limit": 3}})
    path.write_text(yaml.safe_dump(document))
    result = run_train(path, "--data.train", str(tmp_path / "nope.jsonl"))  # stops right after the note
    notes = [line for line in result.stderr.splitlines() if "ignoring" in line]
    assert notes == [f"[parsetune train] ignoring the tpu:, eval: sections of {path} (used by `parsetune tpu` / `parsetune run`)"]
    assert_one_line_error(result, "does not exist")


@pytest.mark.parametrize("overrides, needles", [
    (("--compute.gradient_checkpointing", "linear_output"), ("gradient_checkpointing", "'linear_output'", "linear_outputs")),
    (("--compute.gradient_checkpointing", "linear_outputs", "--compute.transpose_free_dots", "false"),
     ("linear_outputs needs transpose_free_dots",)),
], ids=["typo", "without-transpose-free-dots"])
def test_bad_remat_choice_is_one_line_before_anything_is_written(tmp_path, tiny_model_dir, tiny_data, overrides, needles):
    result = run_train(config(tmp_path, tiny_model_dir, tiny_data), *overrides)
    assert_one_line_error(result, "compute:", *needles)
    assert_nothing_written(result, tmp_path / "run")
