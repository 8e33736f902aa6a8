"""Tests for eval.score.score_predictions and the ``eval score`` CLI wiring."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import pytest

from eval import cli
from eval.score import score_predictions
from parsetune.errors import UserError

ASSET = Path(__file__).parent / "assets" / "viggo_validation_50.jsonl"


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _row(i, ref="inform(name[X], rating[good])", pred=None):
    return {"id": f"ex-{i}", "input": f"sentence {i}", "reference": ref, "prediction": ref if pred is None else pred}


@pytest.fixture
def viggo_preds(tmp_path: Path) -> Path:
    rows = []
    for i, line in enumerate(ASSET.read_text().splitlines()):
        mr = json.loads(line)["meaning_representation"]
        pred = mr if i % 5 else ""  # every fifth prediction empty
        rows.append({"id": json.loads(line)["gem_id"], "input": "x", "reference": mr, "prediction": pred})
    return _write_jsonl(tmp_path / "preds.jsonl", rows)


def test_score_viggo_writes_all_outputs(viggo_preds: Path, tmp_path: Path):
    out = tmp_path / "scores"
    metrics = score_predictions(str(viggo_preds), str(out))
    assert sorted(p.name for p in out.iterdir()) == [
        "confusion_matrix.csv",
        "confusion_matrix.png",
        "errors.json",
        "metrics.json",
        "per_example.jsonl",
    ]
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == metrics
    for key in ("n", "function_name_accuracy", "attribute_set_accuracy", "attribute_value_accuracy",
                "overall_accuracy", "exact_match", "valid_rate", "per_function", "per_attribute"):
        assert key in on_disk
    assert on_disk["n"] == 50
    assert on_disk["exact_match"] == pytest.approx(40 / 50)
    assert on_disk["valid_rate"] == pytest.approx(40 / 50)

    per_example = [json.loads(x) for x in (out / "per_example.jsonl").read_text().splitlines()]
    assert len(per_example) == 50 and per_example[0]["pred_function"] == "empty"

    rows = list(csv.reader((out / "confusion_matrix.csv").open()))
    assert rows[0][-2:] == ["empty", "other"] and len(rows) == 10 and len(rows[0]) == 12
    assert sum(int(c) for r in rows[1:] for c in r[1:]) == 50
    empty_col = rows[0].index("empty")
    assert sum(int(r[empty_col]) for r in rows[1:]) == 10
    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    errors = json.loads((out / "errors.json").read_text())
    assert errors["misses"] == 10
    assert errors["kinds"][0]["kind"] == "invalid MR" and errors["kinds"][0]["count"] == 10
    assert len(errors["kinds"][0]["examples"]) == 2


def test_score_json_task(tmp_path: Path):
    preds = _write_jsonl(tmp_path / "p.jsonl", [
        {"id": 1, "input": "t", "reference": '{"name": "A"}', "prediction": '{"name": "A"}'},
        {"id": 2, "input": "t", "reference": {"name": "B"}, "prediction": "oops"},
    ])
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "required": ["name"]}))
    out = tmp_path / "out"
    m = score_predictions(str(preds), str(out), task="json", schema_path=str(schema))
    assert (m["n"], m["valid_json_rate"], m["schema_adherence_rate"], m["exact_match"]) == (2, 0.5, 0.5, 0.5)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "per_example.jsonl"]


BAD_CASES = [
    ("malformed JSON", [_row(1), "{not json"], ":2: malformed JSON"),
    ("missing reference", [_row(1), {"id": "b", "prediction": "x"}], ":2: missing 'reference'"),
    ("missing prediction", [{"id": "a", "reference": "inform(name[X])"}], ":1: missing 'prediction'"),
    ("missing id", [_row(1), _row(2), {"reference": "inform(name[X])", "prediction": ""}], ":3: missing 'id'"),
    ("duplicate id", [_row(1), _row(2), _row(1)], ":3: duplicate id 'ex-1' (first on line 1)"),
    ("not an object", [_row(1), "[1, 2]"], ":2: expected a JSON object"),
    ("prediction not string", [{"id": "a", "reference": "inform(name[X])", "prediction": None}], ":1: 'prediction' must be a string"),
    ("bad reference MR", [_row(1), _row(2, ref="inform(name[X]")], ":2: reference is not a valid ViGGO"),
]


@pytest.mark.parametrize("label, rows, fragment", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_input_names_file_line_and_writes_nothing(tmp_path: Path, label, rows, fragment):
    preds = _write_jsonl(tmp_path / "preds.jsonl", rows)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UserError) as info:
        score_predictions(str(preds), str(out))
    assert str(info.value).startswith(str(preds) + ":")
    assert fragment in str(info.value)
    assert list(out.iterdir()) == []


def test_bad_line_after_blank_lines_counts_physical_lines(tmp_path: Path):
    preds = tmp_path / "p.jsonl"
    preds.write_text(json.dumps(_row(1)) + "\n\n\n{oops\n")
    with pytest.raises(UserError, match=r"p\.jsonl:4: malformed JSON"):
        score_predictions(str(preds), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_empty_file(tmp_path: Path, content):
    preds = tmp_path / "p.jsonl"
    preds.write_text(content)
    with pytest.raises(UserError, match="empty file"):
        score_predictions(str(preds), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_other_user_errors(tmp_path: Path):
    preds = _write_jsonl(tmp_path / "p.jsonl", [_row(1)])
    out = tmp_path / "out"
    with pytest.raises(UserError, match="no such file"):
        score_predictions(str(tmp_path / "missing.jsonl"), str(out))
    with pytest.raises(UserError, match="unknown task"):
        score_predictions(str(preds), str(out), task="sql")
    with pytest.raises(UserError, match="--schema only applies"):
        score_predictions(str(preds), str(out), schema_path="s.json")
    bad_schema = tmp_path / "s.json"
    bad_schema.write_text('{"type": 12}')
    with pytest.raises(UserError, match="invalid JSON Schema"):
        score_predictions(str(preds), str(out), task="json", schema_path=str(bad_schema))
    bad_schema.write_text('{\n"type": }')
    with pytest.raises(UserError, match=r"s\.json:2: malformed JSON schema"):
        score_predictions(str(preds), str(out), task="json", schema_path=str(bad_schema))
    json_preds = _write_jsonl(tmp_path / "j.jsonl", [{"id": 1, "reference": "{nope", "prediction": "{}"}])
    with pytest.raises(UserError, match=r"j\.jsonl:1: reference is not valid JSON"):
        score_predictions(str(json_preds), str(out), task="json")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        score_predictions(str(preds), str(a_file))
    assert not out.exists()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parsetune")
    cli.register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_register_and_run(viggo_preds: Path, tmp_path: Path, capsys):
    out = tmp_path / "o"
    args = _parser().parse_args(["eval", "score", str(viggo_preds), "--out", str(out)])
    assert args.func(args) == 0
    assert (out / "metrics.json").exists()
    assert "overall_accuracy" in capsys.readouterr().out


def test_cli_help_and_required_args(capsys):
    with pytest.raises(SystemExit) as info:
        _parser().parse_args(["eval", "score", "--help"])
    assert info.value.code == 0
    help_text = capsys.readouterr().out
    assert "PREDICTIONS.jsonl" in help_text and "--out DIR" in help_text and "--schema" in help_text
    with pytest.raises(SystemExit):
        _parser().parse_args(["eval", "score", "p.jsonl"])  # --out is required
    with pytest.raises(SystemExit):
        _parser().parse_args(["eval", "score", "p.jsonl", "--out", "o", "--task", "sql"])


def test_cli_main_reports_user_error_in_one_line(tmp_path: Path, capsys):
    preds = _write_jsonl(tmp_path / "p.jsonl", [_row(1), "{bad"])
    assert cli.main(["eval", "score", str(preds), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{preds}:2:" in err


def test_write_failure_removes_what_was_written(tmp_path: Path, monkeypatch):
    from parsetune import storage

    real_replace = storage.os.replace
    calls = []

    def replace_then_fail(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(storage.os, "replace", replace_then_fail)
    preds = _write_jsonl(tmp_path / "p.jsonl", [_row(1)])
    out = tmp_path / "o"
    with pytest.raises(UserError, match="cannot write \\(No space left on device\\)"):  # one line, no traceback
        score_predictions(str(preds), str(out))
    assert list(out.iterdir()) == []


def test_line_separator_characters_inside_strings_do_not_split_lines(tmp_path: Path):
    """JSON written with ensure_ascii=False keeps U+2028 raw; it must not end a JSONL line."""
    row = {"id": "a", "input": "x\u2028y", "reference": "inform(name[X])", "prediction": "inform(name[X])"}
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    assert score_predictions(str(path), str(tmp_path / "o"))["n"] == 1
