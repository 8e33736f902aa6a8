"""Kill a run after step k (SIGKILL, like a preemption), rerun the same command: the remaining
losses equal an uninterrupted run's."""

from __future__ import annotations

import pytest

from train_helpers import prepare_tiny_data, run_train, tiny_config, train_losses

pytestmark = pytest.mark.slow

STEPS = 8


@pytest.fixture(scope="module")
def tiny_data(tiny_model_dir, tmp_path_factory):
    return prepare_tiny_data(tmp_path_factory.mktemp("data"), tiny_model_dir)


@pytest.mark.parametrize("method", [{"type": "lora", "r": 4, "alpha": 8}, {"type": "full"}], ids=["lora", "full"])
def test_killed_run_resumes_exactly(method, tiny_model_dir, tiny_data, tmp_path):
    overrides = ("--trainer.num_train_steps", str(STEPS), "--export", "false")
    straight = tiny_config(tmp_path / "a.yaml", tiny_model_dir, tiny_data, tmp_path / "straight", method)
    assert run_train(straight, *overrides).returncode == 0

    interrupted = tiny_config(tmp_path / "b.yaml", tiny_model_dir, tiny_data, tmp_path / "interrupted", method)
    killed = run_train(interrupted, *overrides, env={"PARSETUNE_FAULT_KILL_AFTER_STEP": "4"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert max(train_losses(tmp_path / "interrupted")) == 4
    resumed = run_train(interrupted, *overrides)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and "at step 5" in resumed.stderr

    expected, got = train_losses(tmp_path / "straight"), train_losses(tmp_path / "interrupted")
    assert sorted(got) == list(range(STEPS))
    for step in range(STEPS):
        assert got[step] == pytest.approx(expected[step], abs=1e-6), step
