"""`parsetune run`'s prep step is `parsetune prep`: same function, same files, same checks."""

from __future__ import annotations

import json

import pytest

from conftest import ASSETS, run_cli
from parsetune.errors import UserError
from pipelines.config import PrepSection, TrainConfig
from pipelines.run import prep_data


def test_run_prepares_exactly_what_prep_prepares(tmp_path, tiny_model_dir):
    train = tmp_path / "train-source.jsonl"
    train.write_bytes((ASSETS / "viggo_validation_50.jsonl").read_bytes())
    validation = str(ASSETS / "viggo_validation_50.jsonl")
    config = TrainConfig(model=str(tiny_model_dir), prep=PrepSection(train=str(train), validation=validation, instruction="", few_shot=1))
    prep_data(config, str(tmp_path / "run"))
    result = run_cli("prep", "viggo", "--train", str(train), "--validation", validation, "--instruction", "", "--few-shot", "1",
                     "--tokenizer", str(tiny_model_dir), "--out", str(tmp_path / "prep"))
    assert result.returncode == 0, result.stderr
    for name in ("train.jsonl", "validation.jsonl"):
        assert (tmp_path / "run" / name).read_bytes() == (tmp_path / "prep" / name).read_bytes()
    by_run, by_prep = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("run", "prep"))
    by_run.pop("created_at"), by_prep.pop("created_at")
    assert by_run == by_prep and by_run["splits"]["train"]["tokens"]["max_total"] > 0


def test_run_refuses_one_file_as_two_splits(tmp_path, tiny_model_dir):
    validation = str(ASSETS / "viggo_validation_50.jsonl")
    config = TrainConfig(model=str(tiny_model_dir), prep=PrepSection(train=validation, validation=validation))
    with pytest.raises(UserError, match="--train and --validation are the same file"):
        prep_data(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_run_reads_renamed_json_fields_from_the_prep_section(tmp_path, tiny_model_dir):
    example = ASSETS.parent.parent / "prep" / "data" / "json_example"
    renamed = {}
    for split in ("train", "validation"):
        rows = [json.loads(line) for line in (example / f"{split}.jsonl").read_text().splitlines()]
        renamed[split] = tmp_path / f"{split}-renamed.jsonl"
        renamed[split].write_text("".join(json.dumps({"key": r["id"], "sentence": r["text"], "fields": r["json"]}) + "\n" for r in rows))
    prep = PrepSection(task="json", train=str(renamed["train"]), validation=str(renamed["validation"]), schema=str(example / "schema.json"),
                       text_field="sentence", target_field="fields", id_field="key")
    prep_data(TrainConfig(model=str(tiny_model_dir), prep=prep), str(tmp_path / "run"))
    source = [json.loads(line) for line in (example / "validation.jsonl").read_text().splitlines()]
    records = [json.loads(line) for line in (tmp_path / "run" / "validation.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == [s["id"] for s in source]
    assert all(s["text"] in r["input"] for r, s in zip(records, source))
