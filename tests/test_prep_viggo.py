"""parsetune prep viggo: real files in, prompt/completion JSONL + manifest out; bad input leaves nothing."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest

from conftest import ASSETS, run_cli
from parsetune.errors import UserError
from prep.prompt import PromptTemplate, VIGGO_QUERY

GEM_ROWS = [json.loads(line) for line in (ASSETS / "viggo_validation_50.jsonl").read_text().splitlines()]


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["mr", "ref"])
        writer.writerows(rows)
    return path


def write_gem_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def sources(tmp_path):
    train = write_gem_jsonl(tmp_path / "train.jsonl", GEM_ROWS[:30])
    validation = write_gem_jsonl(tmp_path / "validation.jsonl", GEM_ROWS[30:40])
    test = write_csv(tmp_path / "test.csv", [(r["meaning_representation"], r["target"]) for r in GEM_ROWS[40:]])
    return train, validation, test


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_csv_and_jsonl_splits_to_records_and_manifest(sources, tmp_path):
    train, validation, test = sources
    out = tmp_path / "out"
    result = run_cli("prep", "viggo", "--train", str(train), "--validation", str(validation), "--test", str(test), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "test: 10 rows" in result.stdout

    records = read_jsonl(out / "test.jsonl")
    csv_rows = list(csv.DictReader(open(test, encoding="utf-8")))
    assert len(records) == len(csv_rows) == 10
    for record, row in zip(records, csv_rows):
        assert set(record) == {"id", "input", "output"}
        assert record["output"] == row["mr"]
        assert row["ref"] in record["input"]
        assert record["input"].endswith("Meaning representation:\n")
    assert [r["id"] for r in records] == [f"viggo-test-{i}" for i in range(10)]
    assert [r["id"] for r in read_jsonl(out / "train.jsonl")] == [r["gem_id"] for r in GEM_ROWS[:30]]

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["task"] == "viggo"
    assert {s: v["rows"] for s, v in manifest["splits"].items()} == {"train": 30, "validation": 10, "test": 10}
    for split, info in manifest["splits"].items():
        assert info["sha256"] == hashlib.sha256((out / info["file"]).read_bytes()).hexdigest()
    assert manifest["prompt"]["query"] == VIGGO_QUERY
    assert str(test) in manifest["source"]


def test_bundled_copy_is_the_default(tmp_path):
    out = tmp_path / "out"
    result = run_cli("prep", "viggo", "--out", str(out))
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert {s: v["rows"] for s, v in manifest["splits"].items()} == {"train": 5103, "validation": 714}
    first = read_jsonl(out / "validation.jsonl")[0]
    assert first["output"] == GEM_ROWS[0]["meaning_representation"]


def test_few_shot_examples_come_from_train_and_are_reproducible(sources, tmp_path):
    train, validation, _ = sources
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        result = run_cli("prep", "viggo", "--train", str(train), "--validation", str(validation), "--few-shot", "2", "--seed", "7", "--out", str(out))
        assert result.returncode == 0, result.stderr
        outs.append((out / "validation.jsonl").read_bytes())
    assert outs[0] == outs[1]
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    shot_ids = manifest["options"]["few_shot_ids"]
    assert len(shot_ids) == 2
    by_id = {r["gem_id"]: r for r in GEM_ROWS}
    prompt = read_jsonl(tmp_path / "a" / "validation.jsonl")[0]["input"]
    for shot_id in shot_ids:
        assert by_id[shot_id]["meaning_representation"] + "\n\n" in prompt


def test_template_must_contain_text_placeholder():
    with pytest.raises(UserError, match="must contain"):
        PromptTemplate(instruction="", query="no placeholder here")


GOOD_MR = "inform(name[X], rating[good])"


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("broken CSV quoting", 'mr,ref\n"inform(name[X]),hi\n', "test.csv:2"),
        ("missing CSV field", f'mr,ref\n"{GOOD_MR}",fine\n"{GOOD_MR}"\n', "test.csv:3: expected 2 fields"),
        ("empty MR", f'mr,ref\n"{GOOD_MR}",fine\n"",an utterance\n', "test.csv:3: field 'mr' is empty"),
        ("empty utterance", f'mr,ref\n"{GOOD_MR}",fine\n"{GOOD_MR}",  \n', "test.csv:3: field 'ref' is empty"),
        ("MR does not parse", f'mr,ref\n"{GOOD_MR}",fine\n"inform name X",text\n', "test.csv:3: meaning representation does not parse"),
        ("unknown function", f'mr,ref\n"{GOOD_MR}",fine\n"shout(name[X])",text\n', "test.csv:3: meaning representation does not parse (unknown function"),
        ("empty split", "mr,ref\n", "split 'test' has no examples"),
        ("header lacks columns", "meaning,text\nx,y\n", "test.csv:1: CSV header"),
    ],
)
def test_bad_csv_row_fails_naming_the_row_and_writes_nothing(sources, tmp_path, name, content, expected):
    train, validation, _ = sources
    bad = tmp_path / "test.csv"
    bad.write_text(content, encoding="utf-8")
    out = tmp_path / "out"
    result = run_cli("prep", "viggo", "--train", str(train), "--validation", str(validation), "--test", str(bad), "--out", str(out))
    assert result.returncode == 2
    assert expected in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1, "one line, no traceback"
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize(
    "name, lines, expected",
    [
        ("malformed JSON", [json.dumps(GEM_ROWS[0]), "{not json"], "validation.jsonl:2: malformed JSON"),
        ("missing field", [json.dumps({"gem_id": "a", "target": "t"})], "validation.jsonl:1: missing field 'meaning_representation'"),
        ("duplicate ids", [json.dumps(GEM_ROWS[0]), json.dumps(GEM_ROWS[0])], "validation.jsonl:2: duplicate id 'viggo-validation-0' (first seen at"),
        ("not an object", ["[1, 2]"], "validation.jsonl:1: expected a JSON object"),
    ],
)
def test_bad_jsonl_line_fails_naming_the_line(sources, tmp_path, name, lines, expected):
    train, _, _ = sources
    bad = tmp_path / "validation.jsonl"
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    result = run_cli("prep", "viggo", "--train", str(train), "--validation", str(bad), "--out", str(out))
    assert result.returncode == 2
    assert expected in result.stderr, result.stderr
    assert not out.exists()


def test_non_utf8_bytes_are_reported_with_their_line(sources, tmp_path):
    train, _, _ = sources
    bad = tmp_path / "validation.jsonl"
    bad.write_bytes(json.dumps(GEM_ROWS[0]).encode() + b"\n" + b'{"gem_id": "caf\xe9"}\n')
    result = run_cli("prep", "viggo", "--train", str(train), "--validation", str(bad), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "validation.jsonl:2: not valid UTF-8" in result.stderr


def test_hf_hub_unreachable_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    result = run_cli("prep", "viggo", "--hf", "GEM/viggo", "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "cannot load 'GEM/viggo' from the Hugging Face hub" in result.stderr
    assert result.stderr.count("\n") == 1
