"""Task metrics during training: constrained generation on a fixed validation subset at eval steps."""

from __future__ import annotations

import json

import pytest

from parsetune.records import PreparedRecord
from train_helpers import metrics, prepare_tiny_data, run_train, tiny_config


def test_subset_is_spread_over_the_split_and_fixed():
    from pipelines.task_eval import spread_subset

    rows = [PreparedRecord(str(i), f"in {i}", "out") for i in range(10)]
    assert [r.id for r in spread_subset(rows, 4)] == ["0", "2", "5", "7"]
    assert spread_subset(rows, 4) == spread_subset(rows, 4)
    assert len(spread_subset(rows, 64)) == 10


@pytest.mark.parametrize("method", [{"type": "lora", "r": 4, "alpha": 8}, {"type": "full"}])
def test_training_logs_task_metrics_that_match_eval_generate(tmp_path, tiny_model_dir, method):
    """The rows are scored like the final evaluation: at the last step, the in-training metrics equal
    those of `eval generate` + `eval score` on the exported checkpoint for the same rows."""
    from eval.generate import generate_predictions
    from eval.score import score_predictions
    from pipelines.task_eval import spread_subset
    from parsetune.records import read_prepared

    data = prepare_tiny_data(tmp_path / "data", tiny_model_dir)
    config = tiny_config(tmp_path / "c.yaml", tiny_model_dir, data, tmp_path / "run", method, num_train_steps=4, steps_per_eval=2)
    result = run_train(config, "--task_eval.examples", "6", "--task_eval.batch_size", "4", "--task_eval.max_new_tokens", "24")
    assert result.returncode == 0, result.stderr
    rows = [r for r in metrics(tmp_path / "run") if "task_exact_match" in r]
    assert [r["step"] for r in rows] == [1, 3]
    for row in rows:
        assert row["task_rows"] == 6 and row["task_valid_rate"] == 1.0
        assert 0.0 <= row["task_exact_match"] <= row["task_overall"] <= 1.0
    assert "exact match" in result.stderr and "on 6 validation rows" in result.stderr

    subset = spread_subset(read_prepared(str(data / "validation.jsonl")), 6)
    subset_file = tmp_path / "subset" / "validation.jsonl"
    subset_file.parent.mkdir()
    subset_file.write_text("".join(json.dumps({"id": r.id, "input": r.input, "output": r.output}) + "\n" for r in subset))
    (subset_file.parent / "manifest.json").write_text((data / "manifest.json").read_text())
    generate_predictions(
        str(tmp_path / "run" / "hf"), str(subset_file), str(tmp_path / "p.jsonl"), batch_size=4, max_new_tokens=24, constrain="viggo", progress=False
    )
    final = score_predictions(str(tmp_path / "p.jsonl"), str(tmp_path / "scores"))
    assert rows[-1]["task_overall"] == pytest.approx(final["overall_accuracy"])
    assert rows[-1]["task_exact_match"] == pytest.approx(final["exact_match"])
