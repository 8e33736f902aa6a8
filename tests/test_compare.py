"""`eval compare`: the markdown report from hand-made score directories."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli

COLUMNS = ["inform", "request", "give_opinion", "confirm", "verify_attribute", "suggest",
           "request_explanation", "recommend", "request_attribute", "empty", "other"]  # fmt: skip


def _score_dir(path, overall, confusions):
    """A score dir with metrics.json, a PNG placeholder and a CSV holding `confusions` off the diagonal."""
    path.mkdir(parents=True)
    metrics = {
        "task": "viggo", "n": 10, "function_name_accuracy": 0.5, "attribute_set_accuracy": 0.25,
        "attribute_value_accuracy": 0.75, "overall_accuracy": overall, "exact_match": 0.1, "valid_rate": 1.0,
    }  # fmt: skip
    (path / "metrics.json").write_text(json.dumps(metrics))
    (path / "confusion_matrix.png").write_bytes(b"\x89PNG")
    counts = {r: [0] * len(COLUMNS) for r in COLUMNS[:9]}
    for r in COLUMNS[:9]:
        counts[r][COLUMNS.index(r)] = 7  # the diagonal never counts as a confusion
    for (ref, pred), n in confusions.items():
        counts[ref][COLUMNS.index(pred)] = n
    lines = ["reference\\predicted," + ",".join(COLUMNS)] + [r + "," + ",".join(map(str, counts[r])) for r in COLUMNS[:9]]
    (path / "confusion_matrix.csv").write_text("\n".join(lines) + "\n")
    return path


def test_report_table_links_and_top_confusions(tmp_path):
    from eval.compare import compare_runs

    a = _score_dir(tmp_path / "runs" / "a" / "scores", 0.5, {("inform", "confirm"): 3, ("request", "other"): 5, ("suggest", "empty"): 1, ("recommend", "inform"): 2})
    b = _score_dir(tmp_path / "runs" / "b" / "scores", 0.78125, {})
    out = tmp_path / "reports" / "report.md"
    text = compare_runs([str(a), str(b)], str(out), names=["prompted", "full"])
    assert out.read_text() == text
    assert "| metric | prompted | full |" in text
    assert "| overall | 0.500 | 0.781 |" in text
    assert "| n | 10 | 10 |" in text
    assert "| valid rate | 1.000 | 1.000 |" in text
    assert "](../runs/a/scores/confusion_matrix.png)" in text
    section_a = text.split("### prompted")[1].split("### full")[0]
    assert "- request → other: 5\n- inform → confirm: 3\n- recommend → inform: 2" in section_a
    assert "suggest → empty" not in section_a
    assert "No off-diagonal confusions." in text.split("### full")[1]


def test_default_names_are_directory_names(tmp_path):
    from eval.compare import compare_runs

    a = _score_dir(tmp_path / "lora", 0.5, {})
    text = compare_runs([str(a)], str(tmp_path / "r.md"))
    assert "| metric | lora |" in text


def test_cli_compare_and_errors_write_nothing(tmp_path, capsys):
    from parsetune.cli import main

    a = _score_dir(tmp_path / "a", 0.5, {("inform", "confirm"): 3})
    out = tmp_path / "report.md"
    ok = run_cli("eval", "compare", str(a), "--out", str(out), "--names", "x")
    assert ok.returncode == 0, ok.stderr
    assert out.exists() and "| metric | x |" in out.read_text()
    out.unlink()
    for argv, message in [
        ([str(a), str(tmp_path / "missing")], "metrics.json: no such file"),
        ([str(a), "--names", "x,y"], "--names has 2 names for 1 directories"),
    ]:
        assert main(["eval", "compare", *argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()


def test_metrics_without_required_keys(tmp_path):
    from eval.compare import compare_runs
    from parsetune.errors import UserError

    d = tmp_path / "x"
    d.mkdir()
    (d / "metrics.json").write_text(json.dumps({"n": 3}))
    with pytest.raises(UserError, match="missing function_name_accuracy"):
        compare_runs([str(d)], str(tmp_path / "r.md"))


def _json_score_dir(tmp_path, name, predictions, schema=None):
    """`eval score --task json` on hand-made predictions of ViGGO-as-JSON references."""
    from eval.score import score_predictions

    references = [
        {"intent": "inform", "name": "BioShock", "release_year": 2007, "genres": ["shooter"]},
        {"intent": "request_attribute", "genres": None},
    ]
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps({"id": str(i), "input": "t", "reference": json.dumps(r), "prediction": p}) + "\n"
                            for i, (r, p) in enumerate(zip(references, predictions))))
    schema_path = None
    if schema is not None:
        schema_path = tmp_path / "schema.json"
        schema_path.write_text(json.dumps(schema))
    out = tmp_path / name
    score_predictions(str(path), str(out), task="json", schema_path=str(schema_path) if schema_path else None)
    return out


def test_json_report_has_the_json_table_and_per_field(tmp_path):
    from eval.compare import compare_runs

    schema = {"type": "object", "properties": {"intent": {"type": "string"}}, "required": ["intent"]}
    good = _json_score_dir(tmp_path, "good", ['{"intent":"inform","name":"BioShock","release_year":2007,"genres":["shooter"]}',
                                              '{"intent":"request_attribute","genres":null}'], schema)
    bad = _json_score_dir(tmp_path, "bad", ['{"intent":"inform","name":"Bioshock","release_year":2007}', '{"intent": '], schema)
    text = compare_runs([str(good), str(bad)], str(tmp_path / "report.md"), names=["good", "bad"])
    assert text.startswith("# JSON extraction evaluation comparison")
    assert "| metric | good | bad |" in text
    assert "| valid JSON | 1.000 | 0.500 |" in text
    assert "| schema-valid | 1.000 | 0.500 |" in text
    assert "| exact match | 1.000 | 0.000 |" in text
    assert "| field precision | 1.000 | 0.667 |" in text  # bad: intent and release_year right, name wrong
    assert "| field recall | 1.000 | 0.333 |" in text  # of 6 reference fields
    assert "function name" not in text and "Confusion" not in text
    per_field = text.split("## Per field: bad")[1]
    assert "| name | 1 | 1 | 0 | 0.000 | 0.000 |" in per_field
    assert "| genres | 2 | 0 | 0 | — | 0.000 |" in per_field


def test_json_without_schema_shows_a_dash(tmp_path):
    from eval.compare import compare_runs

    run = _json_score_dir(tmp_path, "free", ['{"intent":"inform"}', "{}"])
    text = compare_runs([str(run)], str(tmp_path / "r.md"))
    assert "| schema-valid | — |" in text


def test_runs_of_different_tasks_are_refused(tmp_path):
    from eval.compare import compare_runs
    from parsetune.errors import UserError

    viggo = _score_dir(tmp_path / "viggo", 0.5, {})
    js = _json_score_dir(tmp_path, "js", ['{"intent":"inform"}', "{}"])
    with pytest.raises(UserError, match="cannot compare runs of different tasks \\(json, viggo\\)"):
        compare_runs([str(viggo), str(js)], str(tmp_path / "r.md"))
    assert not (tmp_path / "r.md").exists()


def test_per_field_lists_reference_keys_first():
    from eval.json_metrics import per_field

    stats = per_field(['{"extra": 1, "a": 1}', '{"b": 2}'], [{"a": 1}, {"b": 3}])
    assert list(stats) == ["a", "b", "extra"]
    assert stats["a"] == {"n": 1, "predicted": 1, "correct": 1, "precision": 1.0, "recall": 1.0}
    assert stats["b"]["correct"] == 0 and stats["extra"]["n"] == 0 and stats["extra"]["recall"] is None
