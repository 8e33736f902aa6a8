"""``parsetune tpu`` jobs against the gcloud stand-in: the pod environment of each worker, any parsetune
job (export and eval generate on every worker, eval score on worker 0), one gs:// run dir checked first, masked secrets, safe dry-run text, and
``--watch`` / ``--max-restarts`` recovering a lost spot TPU."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tpu_harness import (
    CONFIG, GS_RUN, ONE_HOST, SECRET, WHERE, create_and_setup, error_of, strip_commands, tpu, wait_for,
)

def test_each_worker_gets_the_pod_environment(fake, capfd, monkeypatch):
    """The stand-in gives worker i what a TPU VM's JAX detects: one coordinator, the process count, index i."""
    monkeypatch.setenv("FAKE_GCLOUD_DEVICES_PER_WORKER", "3")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:1")
    create_and_setup(fake, capfd, accel="v4-16")  # 2 hosts
    assert tpu("submit", *WHERE, "--accelerator-type", "v4-16", "--config", CONFIG, *GS_RUN, "--job", "p") == 0
    port = json.loads((fake.root / "tpus.json").read_text())["viggo-lora"]["port"]
    for w in (0, 1):
        assert wait_for(lambda: (fake.home(w) / "parsetune/jobs/p.rc").exists())
        log = (fake.home(w) / "parsetune/jobs/p.log").read_text()
        assert f"pod: 127.0.0.1:{port} 2 {w} --xla_force_host_platform_device_count=3 cpu http://127.0.0.1:1" in log


@pytest.mark.parametrize("job", [
    ["export", "--checkpoint", "gs://b/r/checkpoints/step-3", "--out", "gs://b/r/hf-3"],
    ["eval", "generate", "--model", "gs://b/r/hf", "--data", "gs://b/d/validation.jsonl", "--out", "gs://b/r/p.jsonl"],
])  # fmt: skip
def test_export_and_generate_join_the_pod_on_every_worker(fake, capfd, monkeypatch, job):
    """Both run JAX over the whole slice: on a multi-host TPU each worker must start them (a process
    alone would wait for its peers in jax.distributed)."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:1")
    create_and_setup(fake, capfd, accel="v4-16")  # 2 hosts
    assert tpu("submit", *WHERE, "--accelerator-type", "v4-16", "--job", "g", "--", *job) == 0
    port = json.loads((fake.root / "tpus.json").read_text())["viggo-lora"]["port"]
    for w in (0, 1):
        assert wait_for(lambda: (fake.home(w) / "parsetune/jobs/g.rc").exists())
        log = (fake.home(w) / "parsetune/jobs/g.log").read_text()
        assert f"pod: 127.0.0.1:{port} 2 {w} " in log and "fake parsetune argv: " + " ".join(job) in log


def test_dry_run_with_max_restarts(fake, capfd, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert tpu("submit", "--config", CONFIG, *GS_RUN, "--job", "j", "--max-restarts", "2", "--poll", "5", "--dry-run") == 0
    out = capfd.readouterr().out
    assert "# then every 5 s: describe viggo-lora and probe job j on each worker until it ends; when the TPU is " \
           "PREEMPTED, TERMINATED or NOT_FOUND: delete, create, setup and start the job again (at most 2 times)" in out
    assert not (fake.root / "calls.jsonl").exists()


# ---- one run dir, checked first; any job; secrets masked everywhere; dry-run comments stay comments ----


def test_multi_host_needs_gs_run_dir_before_any_gcloud_call(fake, capfd, tmp_path):
    config = tmp_path / "local_run.yaml"
    config.write_text(Path(CONFIG).read_text() + "run_dir: runs/local\n")
    err = error_of(capfd, "submit", *WHERE, "--config", str(config))
    assert err == ("parsetune tpu: error: TPU viggo-lora has 4 workers: a multi-host train needs one gs:// run dir every "
                   "worker writes to (the config's run_dir 'runs/local' would be on each worker's own disk): pass "
                   "--run-dir gs://BUCKET/PREFIX or set tpu.run_dir")  # fmt: skip
    assert fake.calls() == []
    err = error_of(capfd, "submit", *ONE_HOST, "--config", str(config), "--max-restarts", "2")
    assert "--max-restarts needs a gs:// run dir (a recreated TPU VM starts with an empty disk)" in err
    assert fake.calls() == []
    # a 4-worker TPU that the flags/config call a 1-host one: caught by describe, still before anything is copied
    create_and_setup(fake, capfd)
    err = error_of(capfd, "submit", *ONE_HOST, "--config", str(config), "--job", "j")
    assert "TPU viggo-lora has 4 workers: a multi-host train needs one gs:// run dir" in err
    assert [a[3] for a in fake.argvs()[1:]] == ["describe"]


def test_score_job_runs_on_worker_0_only(fake, capfd):
    create_and_setup(fake, capfd)  # 4 workers
    out = "gs://b/runs/x/scores"
    assert tpu("submit", *WHERE, "--job", "ex", "--", "eval", "score", "gs://b/runs/x/p.jsonl", "--out", out) == 0
    argvs = strip_commands(fake.argvs())
    assert [a[3] for a in argvs[1:]] == ["describe", "ssh", "scp", "ssh", "ssh"]  # no config copy for eval
    assert argvs[3][-1] == "--worker=0" and argvs[5][-2] == "--worker=0"  # env file and launch: worker 0 only
    assert argvs[4][-2] == "--worker=all"  # the others: marked as not running it
    assert wait_for(lambda: (fake.home(0) / "parsetune/jobs/ex.rc").exists())
    log = (fake.home(0) / "parsetune/jobs/ex.log").read_text()
    assert f"fake parsetune argv: eval score gs://b/runs/x/p.jsonl --out {out}" in log
    assert not (fake.home(1) / "parsetune/jobs/ex.env").exists()
    capfd.readouterr()
    assert tpu("status", *WHERE) == 0
    out_text = capfd.readouterr().out
    assert "worker 0: job ex exited (exit status 0)" in out_text
    assert all(f"worker {w}: job ex skipped (the job runs on another worker)" in out_text for w in (1, 2, 3))
    # the next job may start: nothing runs anywhere
    assert tpu("submit", *WHERE, "--job", "ev", "--worker", "1", "--", "eval", "score", "p.jsonl", "--out", "scores") == 0
    assert wait_for(lambda: (fake.home(1) / "parsetune/jobs/ev.rc").read_text().strip() == "0" if (fake.home(1) / "parsetune/jobs/ev.rc").exists() else False)
    assert "fake parsetune argv: eval score p.jsonl --out scores" in (fake.home(1) / "parsetune/jobs/ev.log").read_text()
    assert "submit needs --config CONFIG" in error_of(capfd, "submit", *WHERE, "--", "run")
    assert "--worker 7: TPU viggo-lora has workers 0..3" in error_of(capfd, "submit", *WHERE, "--worker", "7", "--", "export", "--out", "x")


@pytest.mark.parametrize("secret", ["secret123", "ab"])
def test_logs_and_status_mask_secrets(fake, capfd, monkeypatch, secret):
    monkeypatch.setenv("WANDB_API_KEY", secret)
    create_and_setup(fake, capfd, accel="v3-8")
    monkeypatch.setenv("FAKE_LEAK_SECRET", "1")
    monkeypatch.setenv("FAKE_TRAIN_FAIL_WORKER", "0")
    assert tpu("submit", *ONE_HOST, "--config", CONFIG, "--job", "leak") == 0
    home = fake.home(0)
    assert wait_for(lambda: (home / "parsetune/jobs/leak.rc").exists())
    assert f"the key is {secret}" in (home / "parsetune/jobs/leak.log").read_text()  # the job did print it
    capfd.readouterr()
    assert tpu("logs", *WHERE) == 0
    assert tpu("logs", *WHERE, "--worker", "0") == 0  # streamed, not captured
    assert tpu("status", *WHERE, "--lines", "50") == 2  # the job failed: its log tail is shown
    printed = capfd.readouterr()
    assert printed.out.count("the key is ****") == 2 and "the key is ****" in printed.err
    assert secret not in printed.out + printed.err


@pytest.mark.parametrize("where", ["flag", "file name", "yaml"])
def test_dry_run_comments_cannot_become_commands(fake, capfd, monkeypatch, tmp_path, where):
    """A newline in --run-dir, the config's file name or tpu.run_dir stays inside its # comment: running
    the printed script (with do-nothing gcloud/git) executes no injected line."""
    payload = "\ntouch PWNED\n"
    config = tmp_path / ("c" + payload.replace("\n", "-") + ".yaml")
    if where == "file name":
        config = tmp_path / ("c" + payload + ".yaml")
    text = Path(CONFIG).read_text().replace("  spot: true\n", "  spot: true\n  run_dir: " + json.dumps("gs://b/y" + payload) + "\n")
    config.write_text(text if where == "yaml" else Path(CONFIG).read_text())
    flags = ["--run-dir", "gs://b/x" + payload] if where == "flag" else ["--run-dir", "gs://b/x"] if where == "file name" else []
    assert tpu("submit", "--config", str(config), *flags, "--job", "j", "--dry-run") == 0
    out = capfd.readouterr().out
    assert "\\ntouch PWNED\\n" in out  # the value is shown, escaped, in a comment
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for tool in ("gcloud", "git"):
        (stubs / tool).write_text("#!/bin/sh\nexit 0\n")
        (stubs / tool).chmod(0o755)
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    ran = subprocess.run(["bash", "-c", out], cwd=sandbox, env={"PATH": f"{stubs}:/usr/bin:/bin", "HOME": str(sandbox)},
                         capture_output=True, text=True)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert os.listdir(sandbox) == []


# ---- preemption: submit --max-restarts (stand-in parsetune; the real one: test_tpu_pod.py) ----


@pytest.mark.parametrize("action, state", [("preempt", "PREEMPTED"), ("vanish", "NOT_FOUND")])
def test_max_restarts_recreates_a_lost_spot_tpu(fake, capfd, monkeypatch, action, state):
    monkeypatch.setenv("FAKE_GCLOUD_PREEMPT_AFTER", "1")  # seconds after the job started
    monkeypatch.setenv("FAKE_GCLOUD_PREEMPT_ACTION", action)
    monkeypatch.setenv("FAKE_TRAIN_SECONDS", "3")
    create_and_setup(fake, capfd, accel="v3-8")
    code = tpu("submit", *ONE_HOST, "--config", CONFIG, *GS_RUN, "--job", "j", "--max-restarts", "2", "--poll", "0.2")
    out, err = capfd.readouterr()
    assert code == 0, err
    assert f"restart 1 of 2: TPU viggo-lora is {state}; recreating it and starting job j again" in out
    assert "job j finished: exit status 0 after 1 restart(s)" in out and "restart 2" not in out
    verbs = [a[3] for a in fake.argvs() if a[:3] == ["compute", "tpus", "tpu-vm"]]
    assert verbs.count("create") == 1 and verbs.count("delete") == (1 if action == "preempt" else 0)
    assert (fake.root / "preemptions-viggo-lora").read_text().count("\n") == 1
    log = (fake.home(0) / "parsetune/jobs/j.log").read_text()  # the recreated worker ran the same job to the end
    assert "fake parsetune argv: train parsetune/jobs/j.yaml --run_dir gs://some-bucket/runs/x" in log and "train done" in log
    assert (fake.home(0) / "seen_WANDB_API_KEY").read_text() == SECRET  # the secrets reached the new VM too
    assert SECRET not in out + err


def test_watch_without_restarts_and_failures_are_not_restarted(fake, capfd, monkeypatch):
    monkeypatch.setenv("FAKE_GCLOUD_PREEMPT_AFTER", "0.5")
    monkeypatch.setenv("FAKE_TRAIN_SECONDS", "5")
    create_and_setup(fake, capfd, accel="v3-8")
    err = error_of(capfd, "submit", *ONE_HOST, "--config", CONFIG, "--job", "j", "--watch", "--poll", "0.2")
    assert err == "parsetune tpu: error: job j lost: TPU viggo-lora is PREEMPTED; pass --max-restarts N to recover"
    # a job that fails on a READY TPU is reported, not restarted
    assert tpu("delete", *WHERE, "--yes") == 0
    monkeypatch.delenv("FAKE_GCLOUD_PREEMPT_AFTER")
    monkeypatch.setenv("FAKE_TRAIN_SECONDS", "0")
    monkeypatch.setenv("FAKE_TRAIN_FAIL_WORKER", "1")
    create_and_setup(fake, capfd, accel="v4-16")
    err = error_of(capfd, "submit", *WHERE, "--accelerator-type", "v4-16", "--config", CONFIG, *GS_RUN, "--job", "k",
                   "--max-restarts", "3", "--poll", "0.2")  # fmt: skip
    assert err.startswith("parsetune tpu: error: job failed on worker 1: exited (exit status 1): ")
    assert "create" not in [a[3] for a in fake.argvs() if len(a) > 3]
