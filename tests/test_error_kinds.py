"""Kinds of miss in ViGGO predictions, and the report section that shows them."""

from __future__ import annotations

import json

from eval.error_kinds import classify, top_error_kinds

REF = "inform(name[BioShock], release_year[2007], rating[good], genres[shooter])"


def test_each_difference_is_named():
    assert classify(REF, REF) == []
    kinds = dict(classify("give_opinion(name[Bioshock], rating[good], platforms[PC])", REF))
    assert kinds == {
        "wrong function": "inform → give_opinion",
        "missing release_year": "release_year[2007] left out",
        "missing genres": "genres[shooter] left out",
        "extra platforms": "platforms[PC] added",
    }  # "Bioshock" equals "BioShock" case-insensitively: not a wrong value, but not exact either
    assert dict(classify("inform(name[BioShock], release_year[2007], rating[poor], genres[shooter])", REF)) == {
        "wrong value of rating": "rating[poor] instead of [good]"
    }
    assert [k for k, _ in classify("inform(name[bioshock], release_year[2007], rating[good], genres[shooter])", REF)] == [
        "same content, other text"
    ]
    assert classify("inform(name[BioShock]", REF)[0][0] == "invalid MR"


def test_top_kinds_count_examples_once_and_keep_two_examples():
    wrong = "inform(name[BioShock], release_year[2007], rating[poor], genres[shooter])"
    rows = [(str(i), f"sentence {i}", REF, wrong if i % 2 else REF) for i in range(10)]
    rows.append(("x", "s", REF, "request(name[BioShock], release_year[2007], rating[good], genres[shooter])"))
    kinds = top_error_kinds(rows, k=5, examples=2)
    assert [(k.kind, k.count) for k in kinds] == [("wrong value of rating", 5), ("wrong function", 1)]
    assert [e.id for e in kinds[0].examples] == ["1", "3"]
    assert kinds[0].to_json()["examples"][0]["detail"] == "rating[poor] instead of [good]"


def test_report_shows_attribute_table_and_error_kinds(tmp_path):
    from eval.compare import compare_runs
    from eval.score import score_predictions

    rows = [
        {"id": "a", "input": "Sentence: BioShock is good.\nMeaning representation:\n", "reference": REF, "prediction": REF.replace("good", "poor")},
        {"id": "b", "input": "Sentence: BioShock!\nMeaning representation:\n", "reference": REF, "prediction": REF},
    ]
    preds = tmp_path / "p.jsonl"
    preds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    score_predictions(str(preds), str(tmp_path / "scores"))
    text = compare_runs([str(tmp_path / "scores")], str(tmp_path / "report.md"), names=["lora"])
    section = text.split("## Where lora fails")[1]
    assert "| attribute | in references | predicted | precision | recall | value accuracy |" in section
    assert "| rating | 2 | 2 | 1.000 | 1.000 | 0.500 |" in section
    assert "1 predictions are not exact matches" in section
    assert "1. **wrong value of rating**: 1 examples" in section
    assert "input: Sentence: BioShock is good." in section
    assert "rating[poor] instead of [good]" in section
