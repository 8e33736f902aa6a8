"""The whole ``parsetune tpu`` path on simulated TPU workers running the REAL parsetune.

The recording gcloud stand-in (tests/fake_gcloud.py) runs each worker as local processes with the
environment a TPU VM's JAX would detect (coordinator 127.0.0.1:PORT, process count and index, K CPU
devices per worker); ``FAKE_GCLOUD_REAL_PARSETUNE=1`` makes ``tpu setup`` install a shim running this
checkout's ``python -m parsetune``. The run dir is on the GCS emulator, as on a real pod.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time

import pytest

from conftest import REPO
from tpu_harness import tpu
from train_helpers import prepare_tiny_data, run_train, tiny_config

pytestmark = pytest.mark.slow

METHOD = {"type": "lora", "r": 4, "alpha": 8}
# Two CPU devices per simulated worker, so that a 2-worker slice is a data 2 x model 2 mesh across processes.
DEVICES_PER_WORKER = int(os.environ.get("TEST_POD_DEVICES", "2"))


@pytest.fixture(scope="module")
def tiny_data(tiny_model_dir, tmp_path_factory):
    return prepare_tiny_data(tmp_path_factory.mktemp("data"), tiny_model_dir)


@pytest.fixture
def pod(fake, monkeypatch, gcs_emulator, gcs_bucket):  # noqa: F811
    """The stand-in with real parsetune on the workers, which reach the GCS emulator."""
    monkeypatch.setenv("FAKE_GCLOUD_REAL_PARSETUNE", "1")
    monkeypatch.setenv("FAKE_PYTHON", sys.executable)
    monkeypatch.setenv("FAKE_REPO", str(REPO))
    monkeypatch.setenv("FAKE_GCLOUD_DEVICES_PER_WORKER", str(DEVICES_PER_WORKER))
    monkeypatch.setenv("TENSORSTORE_GCS_HTTP_URL", gcs_emulator)
    monkeypatch.setenv("GOOGLE_AUTH_TOKEN_FOR_TESTING", "dummy")
    monkeypatch.delenv("WANDB_API_KEY")  # (the stand-in's fake key would make wandb try to log in)
    return fake


def where(accel: str) -> list[str]:
    return ["--name", "pod", "--zone", "us-central2-b", "--accelerator-type", accel]


def blobs(bucket, prefix: str) -> dict:
    return {b.name: b for b in bucket.client.list_blobs(bucket.name, prefix=prefix)}


def losses_of(bucket, run: str) -> dict[int, float]:
    rows = [json.loads(line) for line in blobs(bucket, run)[f"{run}/metrics.jsonl"].download_as_text().splitlines()]
    return {r["step"]: r["train_loss"] for r in rows if "train_loss" in r}


def wait_for_job(capfd, accel: str, job: str, workers: int, timeout: float = 600) -> str:
    """Poll `tpu status` until every worker's job exited; fail on a failed job. Returns the last output."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = tpu("status", *where(accel), "--job", job, "--lines", "40")
        out, err = capfd.readouterr()
        assert code == 0, out + err
        if len(re.findall(rf"job {job} exited \(exit status 0\)", out)) == workers:
            return out
        time.sleep(2)
    pytest.fail(f"job {job} did not finish in {timeout} s")


def train_on_pod(pod, capfd, bucket, data, model, tmp_path, accel: str, workers: int, steps: int) -> str:  # noqa: F811
    config = tiny_config(tmp_path / "pod.yaml", model, data, tmp_path / "not-used", METHOD)
    run_dir = f"gs://{bucket.name}/runs/pod"
    assert tpu("create", *where(accel), "--spot") == 0
    assert tpu("setup", *where(accel)) == 0
    assert tpu("submit", *where(accel), "--config", str(config), "--run-dir", run_dir, "--job", "t1",
               "--", "--trainer.num_train_steps", str(steps)) == 0  # fmt: skip
    capfd.readouterr()
    status = wait_for_job(capfd, accel, "t1", workers)
    assert f"TPU pod: READY, {accel}, {workers} workers" in status
    assert tpu("logs", *where(accel), "--lines", "5") == 0
    logs = capfd.readouterr().out
    assert logs.count("exit status 0") == workers and all(f"==> worker {w} <==" in logs for w in range(workers))
    names = blobs(bucket, "runs/pod/")
    assert "runs/pod/config.yaml" in names and "runs/pod/metrics.jsonl" in names
    assert sorted(losses_of(bucket, "runs/pod")) == list(range(steps))
    assert "runs/pod/checkpoints/step-2/metadata.json" in names, sorted(names)
    assert "runs/pod/hf/parsetune_export.json" in names  # the job exported into the same run dir
    for w in range(workers):  # nothing went to a worker's own disk
        assert not (pod.home(w, "pod") / "not-used").exists()
    return run_dir


def test_one_host_tpu_trains_real_parsetune_into_gcs(pod, capfd, gcs_bucket, tiny_data, tiny_model_dir, tmp_path):
    """create -> setup -> submit -> status (polled) -> logs on a 1-host v2-8, then an export job."""
    run_dir = train_on_pod(pod, capfd, gcs_bucket, tiny_data, tiny_model_dir, tmp_path, "v2-8", 1, steps=4)
    # a model trained on the TPU is exported on the TPU, from any checkpoint, into the same run dir
    # (--config: the job's copy on the worker; `export` cannot read RUN_DIR/config.yaml from gs:// yet, see
    # pipelines/checkpoint_export.run_config_for, which hands the gs:// path to draccus' open())
    assert tpu("submit", *where("v2-8"), "--job", "x1", "--", "export", "--checkpoint", f"{run_dir}/checkpoints/step-2",
               "--config", "parsetune/jobs/t1.yaml", "--out", f"{run_dir}/hf-step-2") == 0  # fmt: skip
    capfd.readouterr()
    wait_for_job(capfd, "v2-8", "x1", 1)
    exported = blobs(gcs_bucket, "runs/pod/hf-step-2/")
    assert "runs/pod/hf-step-2/model.safetensors" in exported and "runs/pod/hf-step-2/config.json" in exported


def test_two_host_pod_trains_as_one_job(pod, capfd, gcs_bucket, tiny_data, tiny_model_dir, tmp_path):
    """A v4-16 is 2 hosts: 2 real parsetune processes x 2 CPU devices form one JAX job writing one gs:// run dir."""
    train_on_pod(pod, capfd, gcs_bucket, tiny_data, tiny_model_dir, tmp_path, "v4-16", 2, steps=4)


def test_preempted_spot_tpu_resumes_with_the_same_losses(pod, capfd, monkeypatch, gcs_bucket, tiny_data, tiny_model_dir, tmp_path):
    """Preempt the TPU once a checkpoint exists; --max-restarts recreates it and the job resumes from gs://:
    every step's train loss equals an uninterrupted run's."""
    steps = 10
    overrides = ("--trainer.num_train_steps", str(steps), "--export", "false")
    reference = tiny_config(tmp_path / "ref.yaml", tiny_model_dir, tiny_data, tmp_path / "ref", METHOD)
    env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES_PER_WORKER}", "JAX_PLATFORMS": "cpu"}
    done = run_train(reference, *overrides, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = {r["step"]: r["train_loss"] for r in map(json.loads, (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()) if "train_loss" in r}

    run_dir = f"gs://{gcs_bucket.name}/runs/spot"
    monkeypatch.setenv("FAKE_GCLOUD_PREEMPT_AFTER", f"gs://{gcs_bucket.name}/runs/spot/checkpoints/step-*/metadata.json")
    config = tiny_config(tmp_path / "spot.yaml", tiny_model_dir, tiny_data, tmp_path / "not-used", METHOD)
    assert tpu("create", *where("v2-8"), "--spot") == 0
    assert tpu("setup", *where("v2-8")) == 0
    capfd.readouterr()
    code = tpu("submit", *where("v2-8"), "--config", str(config), "--run-dir", run_dir, "--job", "spot",
               "--max-restarts", "2", "--poll", "0.5", "--", *overrides)  # fmt: skip
    out, err = capfd.readouterr()
    (tmp_path / "submit.out").write_text(out + "\n---- stderr\n" + err)
    assert code == 0, f"see {tmp_path / 'submit.out'}: " + out[-3000:] + err[-3000:]
    assert "restart 1 of 2: TPU pod is PREEMPTED; recreating it and starting job spot again" in out
    assert "job spot finished: exit status 0 after 1 restart(s)" in out
    log = (pod.home(0, "pod") / "parsetune/jobs/spot.log").read_text()
    assert re.search(r"resumed from .*checkpoints at step [1-9]", log), log[-3000:]

    got = losses_of(gcs_bucket, "runs/spot")
    assert sorted(got) == list(range(steps))
    for step in range(steps):
        assert got[step] == pytest.approx(expected[step], abs=1e-6), step
