"""A TPU pod in a box: `parsetune train` as several cooperating JAX processes on 127.0.0.1 (gloo
collectives, fake CPU devices per process), against one process holding all the devices.

- 2 processes x 2 devices (data 2 x model 2) train with the losses of 1 process x 4 devices, for
  LoRA and full; only process 0 writes the run files, and the merged export has the same logits;
- a host killed mid-run stops the others with one line; rerunning the same command on every host
  resumes from the gs:// checkpoint with an uninterrupted run's losses;
- `--hosts N` fails as a whole, naming the host, when one of its processes dies.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO
from train_helpers import metrics, prepare_tiny_data, run_train, tiny_config, train_losses

pytestmark = pytest.mark.slow

TP = {"model_axis_size": 2, "tensor_parallel_axes": ["mlp", "heads", "kv_head", "vocab"]}
DEVICES = lambda n: {"XLA_FLAGS": f"--xla_force_host_platform_device_count={n}", "JAX_PLATFORMS": "cpu"}  # noqa: E731
LORA = {"type": "lora", "r": 4, "alpha": 8}
POD_TIMEOUT = 900  # a hang fails the test instead of blocking the suite


@pytest.fixture(scope="module")
def tiny_data(tiny_model_dir, tmp_path_factory):
    return prepare_tiny_data(tmp_path_factory.mktemp("data"), tiny_model_dir)


def run_pod(config, hosts: int, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "parsetune", "train", str(config), "--hosts", str(hosts), *overrides],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, **DEVICES(2), **(env or {})}, timeout=POD_TIMEOUT,
    )


def hand_made_pod(config, hosts: int, *overrides: str, env: dict | None = None) -> list[subprocess.Popen]:
    """Each host started by hand with the same command, as on a TPU slice (no launcher watching them)."""
    from parsetune.local_pod import free_port, host_env

    port = free_port()
    base = {**os.environ, **DEVICES(2), "PARSETUNE_HEARTBEAT_TIMEOUT": "15", **(env or {})}
    return [
        subprocess.Popen(
            [sys.executable, "-m", "parsetune", "train", str(config), *overrides],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=host_env(i, hosts, port, base),
        )
        for i in range(hosts)
    ]


def logits_of(model_dir, input_ids):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor(input_ids)).logits.numpy()


@pytest.mark.parametrize("method", [LORA, {"type": "full"}], ids=["lora", "full"])
def test_two_hosts_train_like_one(method, tiny_model_dir, tiny_data, tmp_path):
    steps = ("--trainer.num_train_steps", "4")
    one = tiny_config(tmp_path / "one.yaml", tiny_model_dir, tiny_data, tmp_path / "one", method, **TP)
    single = run_train(one, *steps, env=DEVICES(4))
    assert single.returncode == 0, single.stderr[-3000:]

    two = tiny_config(tmp_path / "two.yaml", tiny_model_dir, tiny_data, tmp_path / "two", method, **TP)
    pod = run_pod(two, 2, *steps)
    assert pod.returncode == 0, pod.stderr[-5000:]
    assert "[host 0]" in pod.stderr and "[host 1]" in pod.stderr

    expected, got = train_losses(tmp_path / "one"), train_losses(tmp_path / "two")
    assert sorted(got) == [0, 1, 2, 3]
    for step in got:
        assert got[step] == pytest.approx(expected[step], rel=1e-4), step
    eval_one = [r["eval_loss"] for r in metrics(tmp_path / "one") if "eval_loss" in r]
    eval_two = [r["eval_loss"] for r in metrics(tmp_path / "two") if "eval_loss" in r]
    assert eval_two == pytest.approx(eval_one, rel=1e-4)

    # exactly one writer of the run files: one metrics row per step, one W&B run, one progress bar
    run = tmp_path / "two"
    steps_logged = [r for r in metrics(run) if "train_loss" in r]
    assert len(steps_logged) == 4
    assert all(r["model_tflops_per_s"] > 0 and 0 < r["mfu"] < 1 for r in steps_logged[1:]), "model FLOPs and MFU per step"
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1, "only process 0 runs W&B"
    assert "[host 1] train:" not in pod.stderr and "[host 0] train:" in pod.stderr
    assert (run / "config.yaml").exists() and (run / "hf" / "parsetune_export.json").exists()
    assert (run / "checkpoints" / "step-3" / "metadata.json").exists()
    if method is LORA:
        assert (run / "adapter" / "adapter_model.safetensors").exists()
    assert not list(run.glob(".export-*")) and not list(tmp_path.glob(".export-*")), "no staging left behind"

    ids = [[1, 5, 9, 13, 2, 7, 3, 11], [4, 4, 8, 15, 16, 23, 42, 6]]
    np.testing.assert_allclose(logits_of(run / "hf", ids), logits_of(tmp_path / "one" / "hf", ids), atol=1e-4, rtol=1e-4)


def test_two_hosts_prompt_tune_like_one(tiny_model_dir, tiny_data, tmp_path):
    """Prompt tuning on a pod (vocabulary sharded over the model axis): the same losses as one process
    and the same soft prompt in the PEFT adapter, written once."""
    from parsetune.soft_prompt import read_adapter

    method = {"type": "prompt_tuning", "num_virtual_tokens": 4}
    steps = ("--trainer.num_train_steps", "3", "--optimizer.learning_rate", "0.05")
    one = tiny_config(tmp_path / "one.yaml", tiny_model_dir, tiny_data, tmp_path / "one", method, **TP)
    single = run_train(one, *steps, env=DEVICES(4))
    assert single.returncode == 0, single.stderr[-3000:]
    two = tiny_config(tmp_path / "two.yaml", tiny_model_dir, tiny_data, tmp_path / "two", method, **TP)
    pod = run_pod(two, 2, *steps)
    assert pod.returncode == 0, pod.stderr[-5000:]
    expected, got = train_losses(tmp_path / "one"), train_losses(tmp_path / "two")
    assert sorted(got) == [0, 1, 2] and got[2] < got[0]
    for step in got:
        assert got[step] == pytest.approx(expected[step], rel=1e-4), step
    np.testing.assert_allclose(read_adapter(str(tmp_path / "two" / "adapter")).prompt, read_adapter(str(tmp_path / "one" / "adapter")).prompt, atol=1e-5)
    assert not (tmp_path / "two" / "hf").exists() and not list((tmp_path / "two").glob(".export-*"))


def test_killed_host_stops_the_pod_and_the_rerun_resumes_on_gcs(gcs_bucket, gcs_emulator, tiny_model_dir, tiny_data, tmp_path):
    steps = ("--trainer.num_train_steps", "8", "--export", "false")
    reference = tiny_config(tmp_path / "ref.yaml", tiny_model_dir, tiny_data, tmp_path / "ref", LORA, **TP)
    assert run_train(reference, *steps, env=DEVICES(4)).returncode == 0

    gcs = {"STORAGE_EMULATOR_HOST": gcs_emulator, "TENSORSTORE_GCS_HTTP_URL": gcs_emulator, "GOOGLE_AUTH_TOKEN_FOR_TESTING": "dummy"}
    run_dir = f"gs://{gcs_bucket.name}/runs/pod"
    config = tiny_config(tmp_path / "pod.yaml", tiny_model_dir, tiny_data, tmp_path / "unused", LORA, **TP)
    hosts = hand_made_pod(config, 2, *steps, "--run_dir", run_dir,
                          env={**gcs, "PARSETUNE_FAULT_KILL_AFTER_STEP": "3", "PARSETUNE_FAULT_KILL_PROCESS": "1"})
    started = time.monotonic()
    outputs = [h.communicate(timeout=POD_TIMEOUT) for h in hosts]
    assert hosts[1].returncode == -9, outputs[1][1][-3000:]
    survivor = outputs[0][1].strip().splitlines()
    assert hosts[0].returncode != 0, "the surviving host stopped by itself"
    assert "lost contact with another process of the pod" in survivor[-1], survivor[-5:]
    print(f"surviving host stopped {time.monotonic() - started:.0f} s after the pod started")

    rerun = hand_made_pod(config, 2, *steps, "--run_dir", run_dir, env=gcs)
    outputs = [h.communicate(timeout=POD_TIMEOUT) for h in rerun]
    assert [h.returncode for h in rerun] == [0, 0], outputs[0][1][-3000:] + outputs[1][1][-3000:]
    assert f"resumed from {run_dir}/checkpoints at step" in outputs[0][1]

    import json

    blob = gcs_bucket.blob("runs/pod/metrics.jsonl").download_as_text()
    got = {r["step"]: r["train_loss"] for r in map(json.loads, blob.splitlines()) if "train_loss" in r}
    expected = train_losses(tmp_path / "ref")
    assert sorted(got) == list(range(8))
    for step in range(8):
        assert got[step] == pytest.approx(expected[step], rel=1e-4), step


def test_hosts_flag_fails_as_a_whole_naming_the_host(tiny_model_dir, tiny_data, tmp_path):
    config = tiny_config(tmp_path / "c.yaml", tiny_model_dir, tiny_data, tmp_path / "run", LORA, **TP)
    pod = run_pod(config, 2, "--trainer.num_train_steps", "4", "--export", "false",
                  env={"PARSETUNE_FAULT_KILL_AFTER_STEP": "0", "PARSETUNE_FAULT_KILL_PROCESS": "1"})
    assert pod.returncode == 2
    last = pod.stderr.strip().splitlines()[-1]
    assert last.startswith("parsetune train: error: the simulated pod failed: host 1 was killed by SIGKILL"), last


def test_smollm2_on_two_hosts_of_three_devices_trains_like_six_devices(smollm2_dir, tmp_path):
    """The real model: SmolLM2's 9 heads / 3 KV heads shard over a model axis of 3; data 2 x model 3
    as 2 processes x 3 devices, against 1 process x 6 devices (LoRA; the full fine-tune was measured
    the same way, see docs/scaling.md)."""
    from conftest import run_cli

    data = tmp_path / "viggo"
    assert run_cli("prep", "viggo", "--out", str(data)).returncode == 0
    config = REPO / "configs" / "viggo" / "smollm2_lora_cpu.yaml"
    common = ("--model", str(smollm2_dir), "--data.train", str(data / "train.jsonl"), "--data.validation", "null",
              "--trainer.num_train_steps", "2", "--trainer.model_axis_size", "3", "--trainer.train_batch_size", "8",
              "--export", "false")  # fmt: skip
    single = run_train(config, *common, "--run_dir", str(tmp_path / "one"), env=DEVICES(6))
    assert single.returncode == 0, single.stderr[-3000:]
    pod = subprocess.run(
        [sys.executable, "-m", "parsetune", "train", str(config), "--hosts", "2", *common, "--run_dir", str(tmp_path / "two")],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, **DEVICES(3)}, timeout=POD_TIMEOUT,
    )
    assert pod.returncode == 0, pod.stderr[-5000:]
    expected, got = train_losses(tmp_path / "one"), train_losses(tmp_path / "two")
    assert sorted(got) == [0, 1]
    for step in got:
        assert got[step] == pytest.approx(expected[step], rel=1e-4), step
