"""Hostile and careless inputs that used to end in a traceback (or pass silently): each is now one
line, a non-zero exit, nothing written. The CLI runs in-process (``parsetune.cli.main``) wherever the
error comes before any model work; ``parsetune train`` itself runs in a subprocess, as in
tests/test_train_errors.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import ASSETS
from train_helpers import prepare_tiny_data, run_train, tiny_config

from parsetune.cli import main
from parsetune.errors import UserError

DEEP = "[" * 5000 + "]" * 5000


def one_line_error(capsys, command: str, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err[-2000:]
    last = err.splitlines()[-1]
    assert last.startswith(f"parsetune {command}: error:"), err[-2000:]
    for needle in needles:
        assert needle in last, last
    return last


def paper_config(tmp_path: Path) -> Path:
    """A config whose paths need not exist: the checks below come before anything is read (and
    without prep.base_model, ``run`` could never start fetching a model if they did not)."""
    import yaml

    path = tiny_config(tmp_path / "c.yaml", tmp_path / "model", tmp_path / "data", tmp_path / "run", {"type": "lora"})
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "prep": {"base_model": None}}))
    return path


@pytest.fixture(scope="module")
def tiny_data(tiny_model_dir, tmp_path_factory):
    return prepare_tiny_data(tmp_path_factory.mktemp("data"), tiny_model_dir)


# -- a, b: out-of-range config values, refused before config.yaml is written ----------------------


BAD_VALUES = [
    ("--trainer.num_train_steps", "-5", "trainer.num_train_steps: -5"),
    ("--trainer.num_train_steps", "0", "trainer.num_train_steps: 0"),
    ("--epochs", "-1", "epochs: -1.0"),
    ("--epochs", "0", "epochs: 0.0"),
    ("--epochs", "inf", "epochs: inf"),
    ("--trainer.train_batch_size", "0", "trainer.train_batch_size: 0"),
    ("--trainer.steps_per_eval", "0", "trainer.steps_per_eval: 0"),
    ("--data.max_seq_len", "0", "data.max_seq_len: 0"),
    ("--method.r", "0", "method.r: 0"),
    ("--optimizer.learning_rate", "-0.5", "optimizer.learning_rate: -0.5"),
    ("--task_eval.batch_size", "0", "task_eval.batch_size: 0"),
    ("--eval.max_new_tokens", "-1", "eval.max_new_tokens: -1"),
]


@pytest.mark.parametrize("command, key, value, needle", [
    *(("train", *case) for case in BAD_VALUES),
    ("run", *BAD_VALUES[0]),
    ("run", *BAD_VALUES[2]),
], ids=lambda v: str(v))
def test_out_of_range_config_value_is_one_line_before_anything_is_written(tmp_path, capsys, command, key, value, needle):
    assert main([command, str(paper_config(tmp_path)), key, value]) == 2
    one_line_error(capsys, command, needle, "expected")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("key, value", [("--trainer.num_train_steps", "-5"), ("--epochs", "-1")], ids=["steps", "epochs"])
def test_with_real_data_and_model_the_value_is_still_refused_first(tmp_path, capsys, tiny_model_dir, tiny_data, key, value):
    """The probes' own setting: a config that would otherwise train (-5 wrote config.yaml, then failed
    in optax; epochs -1 trained one step and exited 0)."""
    config = tiny_config(tmp_path / "c.yaml", tiny_model_dir, tiny_data, tmp_path / "run", {"type": "full"})
    assert main(["train", str(config), key, value]) == 2
    one_line_error(capsys, "train", key.lstrip("-"), "expected")
    assert not (tmp_path / "run").exists()


def test_epochs_override_still_ignores_num_train_steps(tmp_path):
    from pipelines.train import parse_config

    config = parse_config(str(paper_config(tmp_path)), ["--epochs", "2", "--trainer.num_train_steps", "-5"])
    assert config.epochs == 2


# -- c: a run dir that is a file ------------------------------------------------------------------


def test_train_into_a_run_dir_that_is_a_file_is_one_line(tmp_path, tiny_model_dir, tiny_data):
    file = tmp_path / "notadir"
    file.write_text("mine\n")
    config = tiny_config(tmp_path / "c.yaml", tiny_model_dir, tiny_data, file, {"type": "full"})
    result = run_train(config)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == f"parsetune train: error: run_dir: {file} is a file, not a directory"
    assert file.read_text() == "mine\n"


def test_a_run_dir_below_a_file_or_a_broken_link_is_refused(tmp_path):
    from pipelines.config_checks import check_run_dir

    file = tmp_path / "notadir"
    file.write_text("mine\n")
    with pytest.raises(UserError, match=f"run_dir: {file}/a/b lies below {file}, which is a file"):
        check_run_dir(str(file / "a" / "b"))
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    with pytest.raises(UserError, match="is a broken symbolic link, not a directory"):
        check_run_dir(str(tmp_path / "link"))
    check_run_dir(str(tmp_path / "new" / "run"))  # a run dir still to be made is fine


def test_run_into_a_run_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    file = tmp_path / "notadir"
    file.write_text("mine\n")
    assert main(["run", str(paper_config(tmp_path)), "--run_dir", str(file)]) == 2
    one_line_error(capsys, "run", f"run_dir: {file} is a file")


# -- d: a truncated model.safetensors --------------------------------------------------------------


@pytest.fixture
def truncated_model(tiny_model_dir, tmp_path) -> Path:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    return model


def test_truncated_weights_are_one_line_naming_the_file(tiny_model_dir, tmp_path):
    from parsetune.hf_files import check_weights

    check_weights(str(tiny_model_dir))  # a whole checkpoint passes
    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    for cut, needle in [(len(data) - 1, "truncated"), (100, "truncated"), (4, "no header"), (0, "no header")]:
        weights.write_bytes(data[:cut])
        with pytest.raises(UserError, match="truncated") as caught:
            check_weights(str(model))
        assert str(weights) in str(caught.value) and needle in str(caught.value)
    weights.write_bytes((20).to_bytes(8, "little") + b"{not json at all!!!}" + b"\0" * 100)
    with pytest.raises(UserError, match="not a safetensors file"):
        check_weights(str(model))


def test_train_on_truncated_weights_is_one_line_before_anything_is_written(tmp_path, truncated_model, tiny_data):
    config = tiny_config(tmp_path / "c.yaml", truncated_model, tiny_data, tmp_path / "run", {"type": "full"})
    result = run_train(config)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("parsetune train: error:") and f"{truncated_model}/model.safetensors: truncated" in last, last
    assert not (tmp_path / "run").exists()


def test_serve_truncated_weights_is_one_line(truncated_model, capsys):
    assert main(["serve", str(truncated_model), "--no-warmup", "--port", "1"]) == 2
    one_line_error(capsys, "serve", f"{truncated_model}/model.safetensors: truncated")


# -- e, f: JSON nested 5000 deep, duplicate keys ----------------------------------------------------


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_deep_json_in_a_user_file_is_one_line(tmp_path, capsys):
    from parsetune.records import read_prepared

    deep = write_jsonl(tmp_path / "deep.jsonl", [DEEP])
    with pytest.raises(UserError, match=r"deep.jsonl:1: malformed JSON: nested more than 128 levels deep"):
        read_prepared(str(deep))  # the one reader of prepared data (train, eval)

    assert main(["eval", "score", str(deep), "--out", str(tmp_path / "s1")]) == 2
    one_line_error(capsys, "eval", "deep.jsonl:1", "nested")

    schema = tmp_path / "deep_schema.json"
    schema.write_text(DEEP)
    preds = write_jsonl(tmp_path / "p.jsonl", [{"id": "1", "reference": '{"a": 1}', "prediction": '{"a": 1}'}])
    assert main(["eval", "score", str(preds), "--task", "json", "--schema", str(schema), "--out", str(tmp_path / "s2")]) == 2
    one_line_error(capsys, "eval", "deep_schema.json", "nested")

    source = write_jsonl(tmp_path / "src.jsonl", [{"id": "a", "text": "t", "json": DEEP}])
    held_out = write_jsonl(tmp_path / "val.jsonl", [{"id": "b", "text": "t", "json": {"a": 1}}])
    assert main(["prep", "json", "--train", str(source), "--validation", str(held_out), "--out", str(tmp_path / "prep")]) == 2
    one_line_error(capsys, "prep", "src.jsonl:1", "nested")
    assert not (tmp_path / "s1").exists() and not (tmp_path / "s2").exists() and not (tmp_path / "prep").exists()


def test_deep_or_duplicate_key_predictions_score_as_invalid_json(tmp_path, capsys):
    from eval.json_metrics import per_field, score_json_example

    for prediction in [DEEP, '{"a": "junk", "a": "right"}', '{"b": {"a": 1, "a": 1}}']:
        score = score_json_example(prediction, {"a": "right"})
        assert not score.valid_json and not score.exact_match and score.n_pred_fields == 0, score
    assert per_field(['{"a": "junk", "a": "right"}'], [{"a": "right"}])["a"]["correct"] == 0
    assert score_json_example('{"a": "right", "b": "[[[{{"}', {"a": "right", "b": "[[[{{"}).exact_match  # brackets in strings are text

    preds = write_jsonl(tmp_path / "p.jsonl", [
        {"id": "1", "reference": '{"a": "right"}', "prediction": '{"a": "junk", "a": "right"}'},
        {"id": "2", "reference": '{"a": "right"}', "prediction": DEEP},
        {"id": "3", "reference": '{"a": "right"}', "prediction": '{"a": "right"}'},
    ])
    assert main(["eval", "score", str(preds), "--task", "json", "--out", str(tmp_path / "s")]) == 0
    metrics = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert metrics["exact_match"] == pytest.approx(1 / 3) and metrics["valid_json_rate"] == pytest.approx(1 / 3)


def test_duplicate_keys_in_a_user_file_are_one_line(tmp_path, capsys):
    preds = write_jsonl(tmp_path / "p.jsonl", ['{"id": "1", "reference": "{}", "prediction": "{}", "prediction": "x"}'])
    assert main(["eval", "score", str(preds), "--task", "json", "--out", str(tmp_path / "s")]) == 2
    one_line_error(capsys, "eval", "p.jsonl:1", "duplicate key 'prediction'")


# -- g: a symbolic link as prep --out ---------------------------------------------------------------


def prep_viggo(tmp_path: Path, out: Path) -> int:
    train = tmp_path / "train-source.jsonl"
    if not train.exists():
        train.write_bytes((ASSETS / "viggo_validation_50.jsonl").read_bytes())
    return main(["prep", "viggo", "--train", str(train), "--validation", str(ASSETS / "viggo_validation_50.jsonl"),
                 "--instruction", "", "--out", str(out)])


def test_prep_out_as_a_symlink_to_a_directory_publishes_into_it(tmp_path, capsys):
    target = tmp_path / "disk" / "prepared"
    target.mkdir(parents=True)
    link = tmp_path / "prep"
    link.symlink_to(target)
    for _ in range(2):  # a new set, then a replaced one
        assert prep_viggo(tmp_path, link) == 0, capsys.readouterr().err
        assert link.is_symlink() and link.resolve() == target.resolve()
        assert sorted(p.name for p in target.iterdir()) == ["manifest.json", "train.jsonl", "validation.jsonl"]
    assert sorted(p.name for p in (tmp_path / "disk").iterdir()) == ["prepared"]  # no staging left behind


def test_prep_out_as_a_broken_symlink_says_so(tmp_path, capsys):
    link = tmp_path / "prep"
    link.symlink_to(tmp_path / "nowhere")
    assert prep_viggo(tmp_path, link) == 2
    one_line_error(capsys, "prep", f"{link}: a broken symbolic link (to {tmp_path / 'nowhere'}")
    assert link.is_symlink() and not (tmp_path / "nowhere").exists()


# -- h: eval compare --names with | or a newline ---------------------------------------------------


def json_score_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    metrics = {"task": "json", "n": 3, "valid_json_rate": 1.0, "schema_adherence_rate": None, "field_precision": 0.5,
               "field_recall": 0.5, "field_f1": 0.5, "exact_match": 0.25, "per_field": {"a|b": {"n": 1, "predicted": 1, "correct": 1}}}
    (path / "metrics.json").write_text(json.dumps(metrics))
    return path


def unescaped_pipes(line: str) -> int:
    return line.replace("\\\\", "").replace("\\|", "").count("|")


def test_compare_names_with_a_pipe_keep_the_table(tmp_path):
    a, b = json_score_dir(tmp_path / "a"), json_score_dir(tmp_path / "b")
    out = tmp_path / "report.md"
    assert main(["eval", "compare", str(a), str(b), "--names", "base|lora,x\\|y", "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    header = next(line for line in lines if line.startswith("| metric |"))
    assert header == "| metric | base\\|lora | x\\\\\\|y |"
    start = lines.index(header)
    table = lines[start : lines.index("", start)]
    assert len(table) == 2 + 7 and all(unescaped_pipes(line) == 4 for line in table), table
    field_rows = [line for line in lines if line.startswith("| a")]
    assert field_rows and all(unescaped_pipes(line) == 7 for line in field_rows), field_rows


@pytest.mark.parametrize("name", ["two\nlines", "tab\there", "cr\rhere"], ids=["newline", "tab", "cr"])
def test_compare_names_with_a_control_character_are_refused(tmp_path, capsys, name):
    a = json_score_dir(tmp_path / "a")
    out = tmp_path / "report.md"
    assert main(["eval", "compare", str(a), "--names", name, "--out", str(out)]) == 2
    one_line_error(capsys, "eval", "run name 1", "control character")
    assert not out.exists()
