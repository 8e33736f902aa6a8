"""`parsetune run` on a JSON task: ViGGO as JSON on the tiny model end to end, and settings that do not
fit the task failing before any heavy work."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import yaml

from conftest import ASSETS, REPO
from parsetune.errors import UserError
from pipelines.config import EvalSection, PrepSection, TrainConfig
from pipelines.eval_plan import check_targets, plan_eval
from train_helpers import tiny_config

EXAMPLE = REPO / "prep" / "data" / "json_example"


def plan(prep: dict, eval_: dict):
    return plan_eval(dataclasses.replace(TrainConfig(), prep=PrepSection(**prep), eval=EvalSection(**eval_)))


def test_the_plan_follows_the_task():
    assert plan({"task": "viggo"}, {}) == plan_eval(TrainConfig())
    assert (plan({"task": "viggo"}, {}).task, plan({"task": "viggo"}, {}).constrain) == ("viggo", "viggo")
    derived = plan({"task": "viggo-json"}, {"constrain": "json-schema"})
    assert (derived.task, derived.constrain, derived.schema, derived.from_prep) == ("json", "json-schema", None, True)
    given = plan({"task": "json", "schema": str(EXAMPLE / "schema.json")}, {"constrain": "json-schema"})
    assert given.from_prep  # the copy prep keeps beside the data
    explicit = plan({"task": "viggo-json"}, {"constrain": "json-schema", "schema": str(EXAMPLE / "schema.json")})
    assert (explicit.schema, explicit.from_prep) == (str(EXAMPLE / "schema.json"), False)
    free = plan({"task": "json"}, {"constrain": None})
    assert (free.task, free.constrain, free.schema, free.from_prep) == ("json", None, None, False)


@pytest.mark.parametrize(
    "prep, eval_, message",
    [
        ({"task": "viggo-json"}, {}, "eval.constrain: viggo is the ViGGO meaning-representation grammar, but task viggo-json writes JSON"),
        ({"task": "json"}, {"constrain": "viggo"}, "but task json writes JSON; use eval.constrain: json-schema"),
        ({"task": "json"}, {"constrain": "json-schema"}, "eval.constrain: json-schema needs a JSON Schema: set eval.schema or prep.schema"),
        ({"task": "viggo"}, {"constrain": "json-schema"}, "but task viggo writes meaning representations"),
        ({"task": "viggo"}, {"schema": "s.json"}, "eval.schema (s.json) is for JSON tasks"),
        ({"task": "viggo-json"}, {"constrain": "json-schema", "schema": "missing.json"}, "missing.json"),
        ({"task": "viggo-json"}, {"constrain": "regex"}, "eval.constrain: unknown constraint 'regex'"),
        ({"task": "xml"}, {}, "unknown task 'xml'; expected one of viggo, json, viggo-json"),
    ],
)
def test_settings_that_do_not_fit_the_task(prep, eval_, message):
    with pytest.raises(UserError) as err:
        plan(prep, eval_)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_targets_that_do_not_satisfy_the_schema_name_schema_file_and_row(tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"n": {"type": "integer"}}}))
    data = tmp_path / "validation.jsonl"
    data.write_text('{"id": "a", "input": "x", "output": "{\\"n\\":1}"}\n{"id": "b", "input": "y", "output": "{\\"n\\":\\"one\\"}"}\n')
    with pytest.raises(UserError, match=rf"{schema}: the target of {data}:2 \(id 'b'\) does not satisfy it at n: 'one' is not of type 'integer'"):
        check_targets(str(schema), [str(data)])


def _json_config(tmp_path, tiny_model_dir, eval_: dict, task_eval: dict | None = None):
    config_path = tiny_config(tmp_path / "config.yaml", tiny_model_dir, tmp_path / "unused", tmp_path / "run", {"type": "lora", "r": 4, "alpha": 8},
                              num_train_steps=3, steps_per_eval=3)
    config = yaml.safe_load(config_path.read_text())
    train = tmp_path / "train-source.jsonl"  # prep refuses one file as two splits
    train.write_bytes((ASSETS / "viggo_validation_50.jsonl").read_bytes())
    config["prep"] = {"task": "viggo-json", "train": str(train), "validation": str(ASSETS / "viggo_validation_50.jsonl"), "instruction": "", "base_model": None}
    config["eval"] = {"splits": ["validation"], "batch_size": 8, "max_new_tokens": 48, "limit": 8, **eval_}
    if task_eval:
        config["task_eval"] = task_eval
    config_path.write_text(yaml.safe_dump(config))
    return config_path


def _run(config_path):
    return subprocess.run([sys.executable, "-m", "parsetune", "run", str(config_path)], capture_output=True, text=True, cwd=REPO)


def test_a_mixed_setting_fails_before_step_one(tmp_path, tiny_model_dir):
    result = _run(_json_config(tmp_path, tiny_model_dir, {"constrain": "viggo"}))
    assert result.returncode == 2
    assert "[1/5]" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert "eval.constrain: viggo is the ViGGO meaning-representation grammar, but task viggo-json writes JSON" in result.stderr
    assert not (tmp_path / "run").exists()


def test_an_eval_schema_the_targets_do_not_satisfy_fails_before_training(tmp_path, tiny_model_dir):
    schema = tmp_path / "strict.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"intent": {"enum": ["inform"]}}}))
    result = _run(_json_config(tmp_path, tiny_model_dir, {"constrain": "json-schema", "schema": str(schema)}))
    assert result.returncode == 2
    assert "[2/5]" in result.stderr and "[3/5]" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert f"{schema}: the target of {tmp_path}/run/prep/train.jsonl:" in last and "does not satisfy it at intent" in last, last
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_run_viggo_json_end_to_end_with_the_derived_schema(tmp_path, tiny_model_dir):
    task_eval = {"examples": 4, "batch_size": 4, "max_new_tokens": 48}
    result = _run(_json_config(tmp_path, tiny_model_dir, {"constrain": "json-schema"}, task_eval))
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "run"
    during = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if "task_field_f1" in line]
    assert [r["step"] for r in during] == [2] and during[0]["task_rows"] == 4  # task metrics while training, under the schema
    assert during[0]["task_valid_rate"] == 1.0 and during[0]["task_schema_rate"] == 1.0
    schema = run_dir / "prep" / "schema.json"
    for path in ("prep/train.jsonl", "prep/manifest.json", "hf/config.json", "adapter/adapter_config.json",
                 "eval/validation/predictions.jsonl", "eval/validation/metrics.json", "report.md"):
        assert (run_dir / path).exists(), path
    assert f"every target satisfies {schema}" in result.stderr
    assert f"json-schema ({schema})" in result.stderr  # generation was constrained by the schema prep derived
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert (config["eval"]["constrain"], config["eval"]["schema"]) == ("json-schema", str(schema))  # what parsetune serve reads
    metrics = json.loads((run_dir / "eval/validation/metrics.json").read_text())
    assert metrics["task"] == "json" and metrics["n"] == 8
    assert metrics["valid_json_rate"] == 1.0 and metrics["schema_adherence_rate"] == 1.0  # constrained decoding
    assert "intent" in metrics["per_field"]
    report = (run_dir / "report.md").read_text()
    assert report.startswith("# JSON extraction evaluation comparison")
    assert "| schema-valid | 1.000 |" in report and "| field F1 |" in report and "## Per field" in report


def test_eval_generate_finds_the_schema_prep_wrote_beside_the_data(tmp_path, tiny_model_dir):
    from conftest import run_cli

    train = tmp_path / "train-source.jsonl"
    train.write_bytes((ASSETS / "viggo_validation_50.jsonl").read_bytes())
    data = tmp_path / "data"
    prepared = run_cli("prep", "viggo-json", "--train", str(train), "--validation", str(ASSETS / "viggo_validation_50.jsonl"), "--out", str(data))
    assert prepared.returncode == 0, prepared.stderr
    out = tmp_path / "predictions.jsonl"
    result = run_cli("eval", "generate", "--model", str(tiny_model_dir), "--data", str(data / "validation.jsonl"), "--out", str(out),
                     "--limit", "2", "--max-new-tokens", "32", "--constrain", "json-schema")
    assert result.returncode == 0, result.stderr
    assert f"constraint: json-schema ({data}/schema.json)" in result.stdout
    assert len(out.read_text().splitlines()) == 2
