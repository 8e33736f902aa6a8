"""parsetune prep json: text-to-JSON extraction data, validated and canonicalised."""

from __future__ import annotations

import json

import pytest

from conftest import REPO, run_cli
from parsetune.tasks.json_form import canonical_json

EXAMPLE = REPO / "prep" / "data" / "json_example"


def test_shipped_example_prepares_against_its_schema(tmp_path):
    out = tmp_path / "events"
    result = run_cli(
        "prep", "json", "--train", str(EXAMPLE / "train.jsonl"), "--validation", str(EXAMPLE / "validation.jsonl"),
        "--schema", str(EXAMPLE / "schema.json"), "--out", str(out),
    )
    assert result.returncode == 0, result.stderr
    source = [json.loads(line) for line in (EXAMPLE / "validation.jsonl").read_text().splitlines()]
    records = [json.loads(line) for line in (out / "validation.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == [s["id"] for s in source]
    for record, row in zip(records, source):
        assert json.loads(record["output"]) == row["json"]
        assert record["output"] == canonical_json(row["json"])
        assert row["text"] in record["input"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["task"] == "json" and manifest["splits"]["train"]["rows"] == 20


def test_csv_with_json_strings_and_generated_ids(tmp_path):
    src = tmp_path / "s.csv"
    src.write_text('text,json\n"Ann, 3 apples","{""name"": ""Ann"", ""n"": 3}"\nBob,"{""n"": 1, ""name"": ""Bob""}"\n', encoding="utf-8")
    held_out = tmp_path / "v.csv"
    held_out.write_bytes(src.read_bytes())
    out = tmp_path / "out"
    result = run_cli("prep", "json", "--train", str(src), "--validation", str(held_out), "--out", str(out))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["train-0", "train-1"]
    assert records[1]["output"] == '{"n":1,"name":"Bob"}'


@pytest.mark.parametrize(
    "row, expected",
    [
        ({"id": "a", "text": "t", "json": "{oops"}, "field 'json' is not valid JSON"),
        ({"id": "a", "text": "t", "json": [1, 2]}, "must hold a JSON object"),
        ({"id": "a", "text": "", "json": {}}, "field 'text' is empty"),
        ({"id": "a", "json": {}}, "missing field 'text'"),
        ({"id": "a", "text": "t", "json": {"title": "x"}}, "does not match the schema"),
    ],
)
def test_bad_rows_fail_with_file_and_line(tmp_path, row, expected):
    good = json.loads((EXAMPLE / "train.jsonl").read_text().splitlines()[0])
    bad = tmp_path / "train.jsonl"
    bad.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    result = run_cli("prep", "json", "--train", str(bad), "--validation", str(EXAMPLE / "validation.jsonl"), "--schema", str(EXAMPLE / "schema.json"), "--out", str(out))
    assert result.returncode == 2
    assert f"{bad}:2:" in result.stderr and expected in result.stderr, result.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("t.csv", 'text,json\nAnn,"{""x"": NaN}"\n', "t.csv:2: field 'json' is not valid JSON: NaN is not valid JSON"),
        ("t.csv", 'text,json\nAnn,"{""x"": -Infinity}"\n', "t.csv:2: field 'json' is not valid JSON: -Infinity is not valid JSON"),
        ("t.jsonl", '{"text": "Ann", "json": {"x": Infinity}}\n', "t.jsonl:1: malformed JSON: Infinity is not valid JSON"),
    ],
)
def test_nan_and_infinity_are_not_json(tmp_path, name, content, expected):
    src = tmp_path / name
    src.write_text(content, encoding="utf-8")
    out = tmp_path / "out"
    result = run_cli("prep", "json", "--train", str(src), "--validation", str(EXAMPLE / "validation.jsonl"), "--out", str(out))
    assert result.returncode == 2, result.stdout
    assert expected in result.stderr and result.stderr.count("\n") == 1
    assert not out.exists()


def test_the_same_file_as_train_and_validation_is_refused(tmp_path):
    train = str(EXAMPLE / "train.jsonl")
    result = run_cli("prep", "json", "--train", train, "--validation", str(EXAMPLE / ".." / "json_example" / "train.jsonl"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert f"--train and --validation are the same file" in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()
